"""Bad input gets a clear error at the earliest point, and nothing is spent on it.

Covered here: an empty or blank query, a 1 MB query, messages without a user turn (in the
graph); the same and a lone surrogate over HTTP, refused before the graph runs; a pool naming a
model the bank does not know, and a bank model the pool does not hold (not used, and said so).

Covered elsewhere, with their messages checked: non-UTF-8 bytes, invalid JSON, an empty last
user turn, too many messages and an oversized body over HTTP (test_server.py); a pool file with
a typo'd field and a missing key variable (test_pool.py, test_cli_live.py, test_graph.py); a
bank directory with a missing, altered or truncated file, and a bank built with another
embedder (test_bank_store.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import PATH_CONTEXT, PATH_QUERIES, ScriptedChat, scripted_pool
from fault_server import FaultServer, serve_app
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langgraph.graph.state import CompiledStateGraph
from test_faults import CONTEXT, fault_graph

from jisi_graph.bank.store import Bank
from jisi_graph.context import JisiContext
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.nodes.common import JisiInputError
from jisi_graph.nodes.embed import MAX_QUERY_CHARS
from jisi_graph.resources import ConfigurationError, Resources
from jisi_graph.server import create_app

ONE_MB = 1_000_000


def scripted(names: tuple[str, ...] = ("A", "B", "C", "D")) -> dict[str, ScriptedChat]:
    return {name: ScriptedChat(model_name=name, reply=f"{name} answers") for name in names}


def graph_of(path_bank: tuple[Bank, Embedder], models: dict[str, ScriptedChat]) -> Any:
    bank, embedder = path_bank
    return build_graph(Resources(bank=bank, embedder=embedder, pool=scripted_pool(models)))


# ------------------------------------------------------------------------------------------
# The graph
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ({"query": ""}, "the query is empty: send a question in 'query' or 'messages'"),
        ({"query": " \n\t "}, "the query is empty: send a question in 'query' or 'messages'"),
        ({"query": 5}, "the query must be a string, got int"),
        (
            {"query": "what is \udc00 2 + 2?"},
            "the query is not valid Unicode text: an unpaired surrogate at character 8",
        ),
        ({"query": "x" * ONE_MB}, f"the query is {ONE_MB} characters long; at most 200000"),
        (
            {"messages": [HumanMessage(content="y" * (MAX_QUERY_CHARS + 1))]},
            f"the query is {MAX_QUERY_CHARS + 1} characters long; at most 200000",
        ),
        ({"messages": []}, "no input: give a 'query' string or a list of 'messages'"),
        (
            {"messages": [SystemMessage(content="be brief"), AIMessage(content="hello")]},
            "the messages hold no user turn to answer",
        ),
        (
            {"messages": [HumanMessage(content="q"), HumanMessage(content="   ")]},
            "the last user message is empty",
        ),
    ],
)
def test_graph_refuses_bad_input_before_any_work(
    path_bank: tuple[Bank, Embedder], inputs: dict[str, Any], says: str
) -> None:
    models = scripted()
    embedded = list(path_bank[1].embeddings.embedded)  # type: ignore[attr-defined]
    with pytest.raises(JisiInputError) as raised:
        graph_of(path_bank, models).invoke(inputs, context=PATH_CONTEXT)
    assert str(raised.value) == says
    # refused in the first node: nothing embedded, no model called
    assert path_bank[1].embeddings.embedded == embedded  # type: ignore[attr-defined]
    assert all(model.log == [] for model in models.values())


def test_a_query_at_the_limit_is_answered(path_bank: tuple[Bank, Embedder]) -> None:
    query = PATH_QUERIES["route"] + " " * (MAX_QUERY_CHARS - len(PATH_QUERIES["route"]))
    out = graph_of(path_bank, scripted()).invoke({"query": query}, context=PATH_CONTEXT)
    assert out["error"] is None and out["answer"]


def test_pool_naming_a_model_the_bank_does_not_know(path_bank: tuple[Bank, Embedder]) -> None:
    bank, embedder = path_bank
    pool = scripted_pool(scripted(("A", "B", "Zed")))
    with pytest.raises(ConfigurationError) as raised:
        Resources(bank=bank, embedder=embedder, pool=pool)
    assert str(raised.value) == (
        "the pool names models the bank does not know: Zed; the bank's models are: A, B, C, D"
    )


def test_bank_model_absent_from_the_pool_is_not_used_and_said_so(
    path_bank: tuple[Bank, Embedder],
) -> None:
    models = scripted(("A", "B", "C"))
    out = graph_of(path_bank, models).invoke({"query": PATH_QUERIES["agg3"]}, context=PATH_CONTEXT)
    decision = out["decision"]
    assert decision["unused_bank_models"] == ["D"]
    assert "D" not in decision["support_scores"]
    assert "D" not in decision["routing_scores"]
    assert "D" not in decision["aggregators"]
    assert {call["model"] for call in decision["calls"]} == {"A", "B", "C"}
    assert out["answer"] == "aggregated by C"


# ------------------------------------------------------------------------------------------
# Over HTTP: refused before the graph runs
# ------------------------------------------------------------------------------------------


@pytest.fixture
def served(path_bank: tuple[Bank, Embedder]) -> Iterator[tuple[str, FaultServer]]:
    with FaultServer() as faults:
        graph: CompiledStateGraph = fault_graph(path_bank, faults)
        with serve_app(create_app(graph, JisiContext(**CONTEXT))) as base_url:
            yield base_url, faults


def post(base_url: str, content: bytes) -> httpx.Response:
    return httpx.post(
        f"{base_url}/chat/completions",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )


def body(content: str, **extra: Any) -> bytes:
    messages = [{"role": "user", "content": content}]
    return json.dumps({"model": "jisi", "messages": messages, **extra}).encode()


def check_error(reply: httpx.Response, status: int, message: str) -> None:
    assert reply.status_code == status
    assert reply.json() == {
        "error": {"message": message, "type": "invalid_request_error", "code": status}
    }


@pytest.mark.parametrize("stream", [False, True])
def test_http_one_megabyte_query_is_refused(served: tuple[str, FaultServer], stream: bool) -> None:
    base_url, faults = served
    reply = post(base_url, body("x" * ONE_MB, stream=stream))
    check_error(reply, 400, f"the query is {ONE_MB} characters long; at most {MAX_QUERY_CHARS}")
    assert faults.requests == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"stream": "no"}, "'stream' must be true or false"),
        ({"stream": True, "stream_options": "x"}, "'stream_options' must be an object"),
        ({"jisi_decision": 1}, "'jisi_decision' must be true or false"),
    ],
)
def test_http_bad_flags_are_refused(
    served: tuple[str, FaultServer], extra: dict[str, Any], message: str
) -> None:
    base_url, faults = served
    check_error(post(base_url, body("what is 2 + 2?", **extra)), 400, message)
    assert faults.requests == []


def test_http_lone_surrogate_is_refused(served: tuple[str, FaultServer]) -> None:
    base_url, faults = served
    raw = b'{"model": "jisi", "messages": [{"role": "user", "content": "caf\\ud800e"}]}'
    check_error(
        post(base_url, raw), 400, "messages[0].content is not valid Unicode (a lone surrogate)"
    )
    assert faults.requests == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"model": "jisi", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
        (body(" \n "), "the last user message is empty"),
        (
            json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(),
            "the messages hold no user turn to answer",
        ),
        (json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(), "must be text"),
        (json.dumps({"messages": "hello"}).encode(), "'messages' must be a non-empty list"),
    ],
)
def test_http_bad_requests_never_reach_a_model(
    served: tuple[str, FaultServer], raw: bytes, message: str
) -> None:
    base_url, faults = served
    reply = post(base_url, raw)
    assert reply.status_code == 400
    assert message in reply.json()["error"]["message"]
    assert faults.requests == []
    # and the server answers the next good request
    good = post(base_url, body(PATH_QUERIES["route"]))
    assert good.status_code == 200
    assert good.json()["jisi"]["mode"] == "route"
