"""Streaming, in process: the progress events of `stream_mode="custom"` and the answer tokens of
`stream_mode="messages"`.

The "messages" stream must carry the final answer only: the aggregator's tokens when JiSi
aggregates with an LLM (probe and candidate calls are tagged `nostream`), and at most the final
answer message when it routes; never the question, never a probe's answer. The models here can
stream (they implement `_stream`), so a probe that leaked would show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    PATH_CONTEXT,
    PATH_MODELS,
    PATH_QUERIES,
    REAL_MODELS,
    ScriptedChat,
    scripted_pool,
)
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk
from langgraph.graph.state import CompiledStateGraph

from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.replay import replay_pool
from jisi_graph.resources import Resources

PIECE_CHARS = 4


class StreamingScripted(ScriptedChat):
    """A scripted model that streams its reply in small pieces."""

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        whole = self._generate(messages, stop, None, **kwargs).generations[0].message
        self.log[-1]["streamed"] = True
        text = str(whole.content)
        pieces = [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
        for i, piece in enumerate(pieces):
            extra = {"usage_metadata": whole.usage_metadata} if i == len(pieces) - 1 else {}
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece, **extra))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk


def streaming_models(**overrides: dict[str, Any]) -> dict[str, StreamingScripted]:
    return {
        name: StreamingScripted(
            model_name=name,
            reply=f"probe reply of {name}",
            aggregate_reply=f"merged answer written by {name}",
            **overrides.get(name, {}),
        )
        for name in PATH_MODELS
    }


def path_graph(
    path_bank: tuple[Bank, Embedder], models: dict[str, StreamingScripted]
) -> CompiledStateGraph:
    bank, embedder = path_bank
    return build_graph(Resources(bank=bank, embedder=embedder, pool=scripted_pool(models)))


def stream_run(
    graph: CompiledStateGraph, inputs: dict[str, Any], context: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[BaseMessage, dict[str, Any]]], dict[str, Any]]:
    """(custom events, messages-stream items, final state) of one streamed run."""
    events: list[dict[str, Any]] = []
    messages: list[tuple[BaseMessage, dict[str, Any]]] = []
    final: dict[str, Any] = {}
    for mode, payload in graph.stream(
        inputs, context=context, stream_mode=["custom", "messages", "values"]
    ):
        if mode == "custom":
            events.append(payload)
        elif mode == "messages":
            messages.append(payload)
        else:
            final = payload
    return events, messages, final


def names(events: list[dict[str, Any]]) -> list[str]:
    return [event["event"] for event in events]


def only(events: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (event,) = [event for event in events if event["event"] == name]
    return event


def is_event(event: dict[str, Any], name: str, key: tuple[str, str]) -> bool:
    return event["event"] == name and (event.get("model"), event.get("role")) == key


def check_model_events(events: list[dict[str, Any]], decision: dict[str, Any]) -> None:
    """Each call is announced before its outcome; outcomes match the decision's call records."""
    for call in decision["calls"]:
        if call["role"] == "aggregator":
            continue
        key = (call["model"], call["role"])
        outcome = "model_answered" if call["ok"] else "model_failed"
        called = [i for i, e in enumerate(events) if is_event(e, "model_called", key)]
        done = [i for i, e in enumerate(events) if is_event(e, outcome, key)]
        assert len(called) == 1 and len(done) == 1, call["model"]
        assert called[0] < done[0]
        if call["ok"]:
            assert events[done[0]]["output_tokens"] == call["output_tokens"]
        else:
            assert events[done[0]]["error"] == call["error"]


# ------------------------------------------------------------------------------------------
# stream_mode="custom": progress events
# ------------------------------------------------------------------------------------------


def test_progress_events_when_aggregating(path_bank: tuple[Bank, Embedder]) -> None:
    graph = path_graph(path_bank, streaming_models())
    events, _, final = stream_run(graph, {"query": PATH_QUERIES["agg2"]}, PATH_CONTEXT)
    decision = final["decision"]
    assert decision["mode"] == "aggregate"

    assert names(events)[:3] == ["embedded", "neighbours", "probes"]
    assert events[0] == {"event": "embedded", "chars": len(PATH_QUERIES["agg2"])}
    assert events[1] == {"event": "neighbours", "support_size": 1, "nearest": ["agg2"]}
    assert events[2] == {"event": "probes", "models": ["A", "B", "C"]}
    # three probes, each called then answered (in parallel: any interleaving)
    middle = names(events)[3:9]
    assert sorted(middle) == ["model_answered"] * 3 + ["model_called"] * 3
    check_model_events(events, decision)
    assert names(events)[9:] == [
        "candidates",
        "switched",
        "aggregation_started",
        "aggregated",
        "finished",
    ]
    assert events[9] == {"event": "candidates", "models": ["A", "B", "C"]}
    assert events[10] == {
        "event": "switched",
        "mode": "aggregate",
        "n": decision["switch_n"],
        "candidates": ["A", "B", "C"],
    }
    assert decision["switch_n"] == 2
    assert events[11] == {"event": "aggregation_started", "method": "llm", "models": ["A", "B"]}
    assert events[12] == {"event": "aggregated", "aggregator": "A"}
    assert events[13] == {
        "event": "finished",
        "mode": "aggregate",
        "answer_source": "A",
        "cost_usd": decision["cost_usd"],
    }


def test_progress_events_when_routing(path_bank: tuple[Bank, Embedder]) -> None:
    graph = path_graph(path_bank, streaming_models())
    events, _, final = stream_run(graph, {"query": PATH_QUERIES["route"]}, PATH_CONTEXT)
    assert final["decision"]["mode"] == "route"
    assert "aggregation_started" not in names(events)
    assert "aggregated" not in names(events)
    assert only(events, "candidates")["models"] == ["A", "B", "C"]
    switched = only(events, "switched")
    assert switched["mode"] == "route" and switched["n"] == final["decision"]["switch_n"] < 2
    assert events[-1] == {
        "event": "finished",
        "mode": "route",
        "answer_source": "A",
        "cost_usd": final["decision"]["cost_usd"],
    }
    check_model_events(events, final["decision"])


def test_progress_events_report_failures_and_extra_candidates(
    path_bank: tuple[Bank, Embedder],
) -> None:
    # route scenario, A down: A's probe fails, D (not a probe) is called as a candidate, C
    # aggregates; the aggregator A would have been is skipped because it failed.
    models = streaming_models(A={"error": TimeoutError("no reply")})
    events, _, final = stream_run(
        path_graph(path_bank, models), {"query": PATH_QUERIES["route"]}, PATH_CONTEXT
    )
    decision = final["decision"]
    check_model_events(events, decision)
    failed = only(events, "model_failed")
    assert failed == {
        "event": "model_failed",
        "model": "A",
        "role": "probe",
        "error": "the call timed out",
    }
    assert only(events, "candidates_called") == {"event": "candidates_called", "models": ["D"]}
    sequence = names(events)
    d_called = next(
        i for i, e in enumerate(events) if e["event"] == "model_called" and e["model"] == "D"
    )
    assert sequence.index("model_failed") < sequence.index("candidates_called") < d_called
    # route runs again once D has answered: the last candidates event is the decision's
    candidates = [e for e in events if e["event"] == "candidates"]
    assert (
        candidates[-1]["models"]
        == [c["model"] for c in decision["candidates"]]
        == [
            "B",
            "C",
            "D",
        ]
    )
    assert only(events, "aggregation_started")["models"] == ["B", "C"]
    assert only(events, "aggregated") == {"event": "aggregated", "aggregator": "C"}
    assert events[-1]["event"] == "finished" and events[-1]["answer_source"] == "C"


def test_progress_events_when_an_aggregator_fails(path_bank: tuple[Bank, Embedder]) -> None:
    models = streaming_models(A={"aggregate_error": RuntimeError("cannot merge")})
    events, messages, final = stream_run(
        path_graph(path_bank, models), {"query": PATH_QUERIES["agg2"]}, PATH_CONTEXT
    )
    sequence = names(events)
    start = sequence.index("aggregation_started")
    assert sequence[start:] == ["aggregation_started", "model_failed", "aggregated", "finished"]
    assert events[start + 1] == {
        "event": "model_failed",
        "model": "A",
        "role": "aggregator",
        "error": "RuntimeError: cannot merge",
    }
    assert events[start + 2] == {"event": "aggregated", "aggregator": "B"}
    # the answer tokens are those of the aggregator that answered
    assert final["answer"] == "merged answer written by B"
    assert "".join(m.text for m, _ in messages) == final["answer"]


# ------------------------------------------------------------------------------------------
# stream_mode="messages": the final answer only
# ------------------------------------------------------------------------------------------


def test_messages_stream_carries_only_the_aggregated_answer(
    path_bank: tuple[Bank, Embedder],
) -> None:
    models = streaming_models()
    _, messages, final = stream_run(
        path_graph(path_bank, models), {"query": PATH_QUERIES["agg2"]}, PATH_CONTEXT
    )
    answer = final["answer"]
    assert answer == "merged answer written by A"
    assert len(messages) > 1  # streamed in pieces
    assert all(isinstance(m, AIMessageChunk) for m, _ in messages)
    assert {meta["langgraph_node"] for _, meta in messages} == {"aggregate"}
    assert "".join(m.text for m, _ in messages) == answer
    for message, _ in messages:
        assert "probe reply" not in message.text
    # the probes streamed their replies too: only the nostream tag kept them out
    calls = [entry for model in models.values() for entry in model.log]
    assert len(calls) == 4
    assert all(entry.get("streamed") for entry in calls)


def test_messages_stream_when_routing_is_the_final_message_only(
    path_bank: tuple[Bank, Embedder],
) -> None:
    _, messages, final = stream_run(
        path_graph(path_bank, streaming_models()), {"query": PATH_QUERIES["route"]}, PATH_CONTEXT
    )
    assert final["answer"] == "probe reply of A"
    assert len(messages) == 1
    (message, meta) = messages[0]
    assert isinstance(message, AIMessage) and message.content == final["answer"]
    assert meta["langgraph_node"] == "finalize"
    assert message.id == final["messages"][-1].id


def test_messages_stream_never_echoes_the_question(path_bank: tuple[Bank, Embedder]) -> None:
    graph = path_graph(path_bank, streaming_models())
    for inputs in (
        {"query": PATH_QUERIES["agg2"]},
        {"messages": [HumanMessage(content=PATH_QUERIES["agg2"])]},
    ):
        _, messages, final = stream_run(graph, inputs, PATH_CONTEXT)
        assert not any(isinstance(m, HumanMessage) for m, _ in messages)
        assert all(m.type == "AIMessageChunk" for m, _ in messages)
        # ... while the question is in the final state's conversation
        assert isinstance(final["messages"][0], HumanMessage)
        assert final["messages"][0].content == PATH_QUERIES["agg2"]
        assert [m.type for m in final["messages"]] == ["human", "ai"]


def test_async_stream_gives_the_same_events_and_tokens(path_bank: tuple[Bank, Embedder]) -> None:
    graph = path_graph(path_bank, streaming_models())

    async def collect() -> tuple[list[str], str, dict[str, Any]]:
        events, text, final = [], "", {}
        async for mode, payload in graph.astream(
            {"query": PATH_QUERIES["agg2"]},
            context=PATH_CONTEXT,
            stream_mode=["custom", "messages", "values"],
        ):
            if mode == "custom":
                events.append(payload["event"])
            elif mode == "messages":
                text += payload[0].text
            else:
                final = payload
        return events, text, final

    events, text, final = asyncio.run(collect())
    assert text == final["answer"] == "merged answer written by A"
    assert events[:3] == ["embedded", "neighbours", "probes"]
    assert events[-5:] == [
        "candidates",
        "switched",
        "aggregation_started",
        "aggregated",
        "finished",
    ]


# ------------------------------------------------------------------------------------------
# The real bank with replay models (ReplayChatModel streams)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_graph(
    real_bank: Bank, embedder: Embedder, real_test_rows: list[BankRow]
) -> CompiledStateGraph:
    return build_graph(Resources(real_bank, embedder, replay_pool(real_test_rows, REAL_MODELS)))


@pytest.mark.slow
def test_real_bank_stream_aggregating(
    replay_graph: CompiledStateGraph, real_test_rows: list[BankRow]
) -> None:
    row = real_test_rows[0]
    events, messages, final = stream_run(replay_graph, {"query": row.query}, {})
    decision = final["decision"]
    assert decision["mode"] == "aggregate" and decision["aggregation_method"] == "llm"

    neighbours = only(events, "neighbours")
    assert neighbours["support_size"] == decision["support_size"] == 40
    assert neighbours["nearest"] == [n["id"] for n in decision["neighbours"]]
    assert only(events, "probes")["models"] == decision["probes"]
    check_model_events(events, decision)
    assert only(events, "aggregation_started")["models"] == decision["aggregated"]
    assert only(events, "aggregated")["aggregator"] == decision["aggregator"]
    assert events[-1]["event"] == "finished"

    # Only the aggregator's tokens, which make up the answer. (Replayed, the aggregator answers
    # with its own recorded answer, so the text may equal its probe's: what is checked is that
    # no token came from a probe call.)
    assert len(messages) > 1
    assert {meta["langgraph_node"] for _, meta in messages} == {"aggregate"}
    assert all(isinstance(m, AIMessageChunk) for m, _ in messages)
    assert "".join(m.text for m, _ in messages) == final["answer"]
    assert final["answer"] == row.raw_output[decision["aggregator"]]


@pytest.mark.slow
def test_real_bank_stream_routing(
    replay_graph: CompiledStateGraph, real_test_rows: list[BankRow]
) -> None:
    row = real_test_rows[1]
    # one candidate: JiSi routes to it.
    events, messages, final = stream_run(replay_graph, {"query": row.query}, {"top_k": 1})
    decision = final["decision"]
    assert decision["mode"] == "route"
    assert "aggregation_started" not in names(events)
    assert [(type(m), meta["langgraph_node"]) for m, meta in messages] == [(AIMessage, "finalize")]
    assert messages[0][0].content == final["answer"] == row.raw_output[decision["answer_source"]]
