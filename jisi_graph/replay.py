"""Replay: a chat model that answers from recorded rows, for evaluation and tests.

`ReplayChatModel` answers as one model of the data: given the query (the last user turn), it
returns that model's recorded answer with the recorded token usage and cost. It plugs into the
graph exactly where a live `ChatOpenAI` would, through `replay_pool`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from jisi_graph.bank.schema import BankRow
from jisi_graph.calls import RECORDED_COST_KEY
from jisi_graph.pool import ModelSpec, Pool

_STREAM_CHUNK_CHARS = 24


class ReplayMissError(LookupError):
    """The replay has no recorded answer of this model to this query."""


@dataclass(frozen=True)
class RecordedAnswer:
    """One model's recorded answer to one query."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    cost: float | None


class ReplayTable:
    """Recorded answers by query text and model."""

    def __init__(self, rows: Iterable[BankRow]) -> None:
        """Index the rows' answers; a query repeated in the data keeps its first row."""
        self._answers: dict[str, dict[str, RecordedAnswer]] = {}
        self.duplicates = 0
        for row in rows:
            key = _key(row.query)
            if key in self._answers:
                self.duplicates += 1
                continue
            self._answers[key] = {
                name: RecordedAnswer(
                    text=text,
                    prompt_tokens=row.usages[name].prompt_tokens if name in row.usages else 0,
                    completion_tokens=(
                        row.usages[name].completion_tokens if name in row.usages else 0
                    ),
                    cost=row.usages[name].cost if name in row.usages else None,
                )
                for name, text in row.raw_output.items()
            }

    def __len__(self) -> int:
        return len(self._answers)

    def answer(self, model: str, query: str) -> RecordedAnswer:
        """The recorded answer, or a ReplayMissError saying which is missing."""
        answers = self._answers.get(_key(query))
        if answers is None:
            raise ReplayMissError(f"no recorded row for this query ({_preview(query)})")
        if model not in answers:
            raise ReplayMissError(f"no recorded answer of model {model!r} to this query")
        return answers[model]


class ReplayChatModel(BaseChatModel):
    """Answers as `model_name` did in the recorded rows (the last user turn is the query)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str
    table: ReplayTable

    @property
    def _llm_type(self) -> str:
        return "jisi-replay"

    def _recorded(self, messages: Sequence[BaseMessage]) -> RecordedAnswer:
        for message in reversed(messages):
            if message.type == "human":
                return self.table.answer(self.model_name, message.text)
        raise ReplayMissError("no user message to replay an answer to")

    def _message(self, recorded: RecordedAnswer) -> dict[str, Any]:
        usage = {
            "input_tokens": recorded.prompt_tokens,
            "output_tokens": recorded.completion_tokens,
            "total_tokens": recorded.prompt_tokens + recorded.completion_tokens,
        }
        metadata: dict[str, Any] = {"model_name": self.model_name}
        if recorded.cost is not None:
            metadata[RECORDED_COST_KEY] = recorded.cost
        return {"usage_metadata": usage, "response_metadata": metadata}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        recorded = self._recorded(messages)
        message = AIMessage(content=recorded.text, **self._message(recorded))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        recorded = self._recorded(messages)
        text = recorded.text
        pieces = [
            text[i : i + _STREAM_CHUNK_CHARS] for i in range(0, len(text), _STREAM_CHUNK_CHARS)
        ]
        for i, piece in enumerate(pieces or [""]):
            extra = self._message(recorded) if i == len(pieces) - 1 else {}
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, **extra))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk


def replay_pool(
    rows: Iterable[BankRow],
    models: Sequence[str],
    *,
    aggregators: Sequence[str] | None = None,
) -> Pool:
    """A pool of replay models answering from `rows` (costs: the recorded ones)."""
    table = ReplayTable(rows)
    allowed = set(aggregators) if aggregators is not None else set(models)
    specs = [ModelSpec(name=name, aggregator=name in allowed) for name in models]
    return Pool.from_models(
        specs, factory=lambda spec: ReplayChatModel(model_name=spec.name, table=table)
    )


def _key(query: str) -> str:
    return query.strip()


def _preview(query: str) -> str:
    text = " ".join(query.split())
    return repr(text[:80] + ("..." if len(text) > 80 else ""))
