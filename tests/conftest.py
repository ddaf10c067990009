"""Shared fixtures and test doubles.

- One small real bank per session: a slice of the shared ZeroEval data embedded with the real
  default embedder (tests using it are marked slow and skip if the data file is absent).
- A synthetic bank whose embeddings are chosen by hand (`FakeEmbeddings`), so that support sets,
  P, R and the switch can be computed by hand.
- `ScriptedChat`, a chat model that answers with set texts and usage, or raises.
- `OpenAIStub`, an OpenAI-compatible HTTP server on 127.0.0.1 whose behaviour is chosen per model.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from jisi_graph.bank.build import build_bank, write_bank
from jisi_graph.bank.loaders import load_rows
from jisi_graph.bank.manifest import SourceRecord
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.embedding import Embedder, load_embedder
from jisi_graph.pool import ModelSpec, Pool

SHARED_DATA = Path(
    os.environ.get("JISI_DATA_DIR")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
"""The shared data, where it lies: ../shared/data beside the repository, or $JISI_DATA_DIR."""
DATA_FILE = SHARED_DATA / "zeroeval_gsm8k_math.jsonl.gz"
REAL_MODELS = ("o1-mini-2024-09-12", "gpt-4o-2024-08-06", "gemma-2-2b-it")
REAL_TRAIN_ROWS = 40
REAL_TEST_ROWS = 3
FAKE_EMBEDDER_ID = "test:fake-embeddings"


# ------------------------------------------------------------------------------------------
# Fake embeddings: texts mapped to chosen unit vectors
# ------------------------------------------------------------------------------------------


def unit(*components: float) -> list[float]:
    """The vector of `components`, scaled to unit length."""
    norm = math.sqrt(sum(c * c for c in components))
    return [c / norm for c in components]


def basis(i: int, dim: int) -> list[float]:
    """The i-th standard basis vector of dimension `dim`."""
    return [1.0 if k == i else 0.0 for k in range(dim)]


class FakeEmbeddings(Embeddings):
    """Maps known texts to set vectors (others to `default`) and logs every text it embeds."""

    def __init__(self, vectors: Mapping[str, Sequence[float]], default: Sequence[float]) -> None:
        self.vectors = {text: list(vector) for text, vector in vectors.items()}
        self.default = list(default)
        self.embedded: list[str] = []
        self.document_calls = 0

    def _vector(self, text: str) -> list[float]:
        self.embedded.append(text)
        return list(self.vectors.get(text, self.default))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.document_calls += 1
        return [self._vector(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vector(text)


def fake_embedder(
    vectors: Mapping[str, Sequence[float]], default: Sequence[float], embedder_id: str = ""
) -> Embedder:
    """An `Embedder` over `FakeEmbeddings`."""
    return Embedder(
        embeddings=FakeEmbeddings(vectors, default),
        id=embedder_id or FAKE_EMBEDDER_ID,
        window=None,
    )


def synthetic_source() -> SourceRecord:
    return SourceRecord(path="synthetic", sha256=None, split="train")


def make_row(
    query: str,
    scores: Mapping[str, float],
    *,
    dataset: str = "default",
    index: int | str | None = None,
    answers: Mapping[str, str] | None = None,
    completion_tokens: Mapping[str, int] | int = 10,
    prompt_tokens: int = 50,
    costs: Mapping[str, float | None] | None = None,
    agg_records: Mapping[str, float] | None = None,
) -> BankRow:
    """A bank row; every scored model answered unless `answers` says otherwise."""
    if answers is None:
        answers = {model: f"past answer of {model} to {query}" for model in scores}
    usages: dict[str, dict[str, Any]] = {}
    for model in scores:
        tokens = (
            completion_tokens
            if isinstance(completion_tokens, int)
            else completion_tokens.get(model, 10)
        )
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}
        if costs is not None and costs.get(model) is not None:
            usage["cost"] = costs[model]
        usages[model] = usage
    data: dict[str, Any] = {
        "query": query,
        "dataset": dataset,
        "index": index,
        "split": "train",
        "records": dict(scores),
        "usages": usages,
        "raw_output": dict(answers),
    }
    if agg_records is not None:
        data["agg_records"] = dict(agg_records)
    return BankRow.model_validate(data)


# ------------------------------------------------------------------------------------------
# The synthetic bank of the switch paths
#
# Each scenario row has its own axis: a query mapped to that axis has exactly one bank row at
# similarity 1 and the others at 0, so with support_k = 1 its support set is that row, F is that
# row, and P = R = the row's scores. Two "shaper" rows lift model C's bank-wide ability G so that
# the top aggregator by A differs from the top model by P.
# ------------------------------------------------------------------------------------------

PATH_MODELS = ("A", "B", "C", "D")
PATH_DIM = 6
PATH_ROWS: dict[str, tuple[int, str, dict[str, float]]] = {
    # name: (axis, dataset, scores)
    "route": (0, "chat", {"A": 1.0, "B": 0.5, "C": 0.4, "D": 0.3}),
    "agg2": (1, "chat", {"A": 1.0, "B": 0.9, "C": 0.5, "D": 0.1}),
    "agg3": (2, "mathy", {"A": 0.9, "B": 0.85, "C": 0.8, "D": 0.1}),
    "shaper1": (3, "chat", {"A": 0.0, "B": 0.0, "C": 1.0, "D": 0.0}),
    "shaper2": (4, "chat", {"A": 0.0, "B": 0.0, "C": 1.0, "D": 0.0}),
}
PATH_QUERIES = {name: f"Q-{name}" for name in PATH_ROWS}
"""Query text that lands on each scenario row."""
PATH_CONTEXT: dict[str, Any] = {"support_k": 1, "max_retries": 0, "timeout_s": 5.0}


def path_bank_and_embedder() -> tuple[Bank, Embedder]:
    vectors: dict[str, list[float]] = {}
    rows = []
    for name, (axis, dataset, scores) in PATH_ROWS.items():
        vectors[f"bank {name}"] = basis(axis, PATH_DIM)
        vectors[PATH_QUERIES[name]] = basis(axis, PATH_DIM)
        rows.append(make_row(f"bank {name}", scores, dataset=dataset, index=name))
    embedder = fake_embedder(vectors, default=basis(PATH_DIM - 1, PATH_DIM))
    bank = build_bank(
        rows,
        embedder,
        source=synthetic_source(),
        models=list(PATH_MODELS),
        votable={"mathy": True, "chat": False},
    )
    return bank, embedder


@pytest.fixture(scope="session")
def path_bank() -> tuple[Bank, Embedder]:
    """The synthetic bank of the switch paths, and its fake embedder."""
    return path_bank_and_embedder()


# ------------------------------------------------------------------------------------------
# Scripted chat models
# ------------------------------------------------------------------------------------------


class ScriptedChat(BaseChatModel):
    """Answers the query with `reply`, an aggregation (a system message first) with
    `aggregate_reply`; raises `error` / `aggregate_error` instead when set. Logs every call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str
    reply: str = "an answer"
    aggregate_reply: str | None = None
    error: BaseException | None = None
    aggregate_error: BaseException | None = None
    input_tokens: int = 100
    output_tokens: int = 10
    aggregate_input_tokens: int = 400
    aggregate_output_tokens: int = 20
    log: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        aggregating = any(isinstance(m, SystemMessage) for m in messages)
        self.log.append({"aggregating": aggregating, "messages": messages, "kwargs": kwargs})
        if aggregating:
            if self.aggregate_error is not None:
                raise self.aggregate_error
            text = self.aggregate_reply or f"aggregated by {self.model_name}"
            tokens = (self.aggregate_input_tokens, self.aggregate_output_tokens)
        else:
            if self.error is not None:
                raise self.error
            text, tokens = self.reply, (self.input_tokens, self.output_tokens)
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": tokens[0],
                "output_tokens": tokens[1],
                "total_tokens": sum(tokens),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def scripted_pool(
    models: Mapping[str, ScriptedChat],
    *,
    prices: Mapping[str, tuple[float, float]] | None = None,
    aggregators: Sequence[str] | None = None,
) -> Pool:
    """A pool of scripted models (prices: USD per million input/output tokens)."""
    specs = [
        ModelSpec(
            name=name,
            input_price=(prices or {}).get(name, (0.0, 0.0))[0],
            output_price=(prices or {}).get(name, (0.0, 0.0))[1],
            aggregator=aggregators is None or name in aggregators,
        )
        for name in models
    ]
    return Pool.from_models(specs, factory=lambda spec: models[spec.name])


# ------------------------------------------------------------------------------------------
# The real bank: a slice of the shared data, embedded once per session
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def data_file() -> Path:
    if not DATA_FILE.is_file():
        pytest.skip(f"shared data file {DATA_FILE} is absent")
    return DATA_FILE


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real default embedder (bundled all-MiniLM-L6-v2), loaded once."""
    return load_embedder()


@pytest.fixture(scope="session")
def real_rows(data_file: Path) -> list[BankRow]:
    return load_rows(data_file, split="train", models=list(REAL_MODELS), limit=REAL_TRAIN_ROWS)


@pytest.fixture(scope="session")
def real_test_rows(data_file: Path) -> list[BankRow]:
    return load_rows(data_file, split="test", models=list(REAL_MODELS), limit=REAL_TEST_ROWS)


@pytest.fixture(scope="session")
def real_bank_dir(
    tmp_path_factory: pytest.TempPathFactory,
    real_rows: list[BankRow],
    embedder: Embedder,
    data_file: Path,
) -> Path:
    source = SourceRecord(path=str(data_file), sha256=None, split="train", limit=REAL_TRAIN_ROWS)
    bank = build_bank(real_rows, embedder, source=source, models=list(REAL_MODELS))
    return write_bank(bank, tmp_path_factory.mktemp("real") / "bank")


@pytest.fixture(scope="session")
def real_bank(real_bank_dir: Path) -> Bank:
    return Bank.load(real_bank_dir)


# ------------------------------------------------------------------------------------------
# An OpenAI-compatible stub server on loopback
# ------------------------------------------------------------------------------------------


class OpenAIStub:
    """`/v1/chat/completions` whose behaviour is the suffix of the model id after its last '-':
    ok, slow (sleeps `slow_s`, then answers), error500, empty, ratelimited (429 with
    Retry-After: `retry_after`)."""

    def __init__(self, slow_s: float = 2.0, retry_after: str = "0.2") -> None:
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.requests: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.handle(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def handle(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        model = str(body.get("model"))
        with self._lock:
            self.requests[model] += 1
            self.bodies.append(body)
        behaviour = model.rsplit("-", 1)[-1]
        try:
            if handler.path != "/v1/chat/completions" or body.get("stream"):
                self._send(handler, 400, {"error": {"message": "unsupported"}})
            elif behaviour == "error500":
                self._send(handler, 500, {"error": {"message": "boom"}})
            elif behaviour == "ratelimited":
                self._send(
                    handler,
                    429,
                    {"error": {"message": "slow down"}},
                    {"Retry-After": self.retry_after},
                )
            else:
                if behaviour == "slow":
                    time.sleep(self.slow_s)
                aggregating = body["messages"][0]["role"] == "system"
                text = "" if behaviour == "empty" else self.text(model, aggregating)
                self._send(handler, 200, self.completion(model, text))
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            return

    @staticmethod
    def text(model: str, aggregating: bool) -> str:
        return f"aggregate by {model}" if aggregating else f"{model} says the answer is 42"

    @staticmethod
    def completion(model: str, text: str) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{model}",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
        }

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: dict[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)


@pytest.fixture
def openai_stub() -> Iterator[OpenAIStub]:
    """A fresh stub server on an ephemeral loopback port, shut down after the test."""
    stub = OpenAIStub()
    stub.thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()


# ------------------------------------------------------------------------------------------
# A `jisi replay-serve` process answering as every recorded model of the test split
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def replay_endpoint(data_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (`http://127.0.0.1:PORT/v1`) of a replay server subprocess, for the session."""
    from live_servers import start_replay_server

    server = start_replay_server(data_file, tmp_path_factory.mktemp("replay-serve"))
    try:
        yield server.base_url
    finally:
        server.stop()
