"""Faults over real HTTP: the graph and `jisi serve` against the fault-injecting server.

The synthetic path bank (conftest) fixes who does what: on "agg3" the probes are A, B, C, the
aggregators are tried in the order C, A, B, and with every model answering C aggregates the
three answers. The fault server (tests/fault_server.py) makes chosen models misbehave; each test
checks what is retried, what is recorded, what the answer is, and that time stays bounded.
`jisi serve` runs in this process (uvicorn in a thread, on loopback) so that it can use the
in-memory bank.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import PATH_CONTEXT, PATH_MODELS, PATH_QUERIES
from fault_server import FaultServer, answer_text, serve_app
from langchain_core.messages import HumanMessage
from langgraph.graph.state import CompiledStateGraph

from jisi_graph.bank.store import Bank
from jisi_graph.calls import estimate_usage
from jisi_graph.context import JisiContext
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.pool import ModelSpec, Pool
from jisi_graph.resources import Resources
from jisi_graph.server import RESTART_NOTICE, create_app
from jisi_graph.state import ModelCall

TIMEOUT_S = 0.5
CONTEXT: dict[str, Any] = {**PATH_CONTEXT, "timeout_s": TIMEOUT_S, "max_retries": 1}
PRICES = (1.0, 2.0)  # USD per million input / output tokens, every model
ANSWER_COST = (120 * PRICES[0] + 30 * PRICES[1]) / 1e6  # the fault server's usage


@pytest.fixture
def faults() -> Iterator[FaultServer]:
    """A fresh fault server; every model answers normally until told otherwise."""
    with FaultServer(slow_s=3.0, retry_after="0.1") as server:
        yield server


def fault_pool(server: FaultServer, key_env: str | None = None) -> Pool:
    """The path models, each served by the fault server under its own name."""
    return Pool.from_models(
        [
            ModelSpec(
                name=name,
                base_url=server.base_url,
                api_key_env=key_env,
                input_price=PRICES[0],
                output_price=PRICES[1],
            )
            for name in PATH_MODELS
        ]
    )


def fault_graph(path_bank: tuple[Bank, Embedder], server: FaultServer) -> CompiledStateGraph:
    bank, embedder = path_bank
    return build_graph(Resources(bank=bank, embedder=embedder, pool=fault_pool(server)))


def calls_of(decision: dict[str, Any]) -> list[ModelCall]:
    return [ModelCall.model_validate(call) for call in decision["calls"]]


def timed_invoke(graph: CompiledStateGraph, query: str, **context: Any) -> tuple[dict, float]:
    started = time.perf_counter()
    out = graph.invoke({"query": query}, context={**CONTEXT, **context})
    return out, time.perf_counter() - started


# ------------------------------------------------------------------------------------------
# The graph: a failing probe is retried within bounds, recorded, and the others answer
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "kind", "attempts", "says"),
    [
        ("ratelimit", "rate_limited", 2, "HTTP 429 rate limited"),
        ("drop", "connection", 2, "the connection failed or was dropped"),
        ("malformed", "bad_response", 2, "malformed reply (JSONDecodeError)"),
        ("wrongshape", "bad_response", 2, "malformed reply (no 'choices')"),
        ("cutbody", "connection", 2, "the connection failed or was dropped"),
        ("echoheaders", "http_error", 1, "HTTP 401 from the endpoint"),
    ],
)
def test_failing_probe_is_retried_recorded_and_the_others_answer(
    path_bank: tuple[Bank, Embedder],
    faults: FaultServer,
    behaviour: str,
    kind: str,
    attempts: int,
    says: str,
) -> None:
    faults.set("A", behaviour)
    out, elapsed = timed_invoke(fault_graph(path_bank, faults), PATH_QUERIES["agg3"])
    decision = out["decision"]
    assert faults.counts["A"] == attempts  # a 401 is not retried: a retry cannot fix it
    (failed,) = [c for c in calls_of(decision) if c.model == "A"]
    assert (failed.ok, failed.error_kind, failed.attempts) == (False, kind, attempts)
    assert decision["failures"] == {"A": f"{kind}: {says}"}
    # R over B (.85), C (.8), D (.1): D is called as a candidate; B and C are aggregated by C
    assert [c["model"] for c in decision["candidates"]] == ["B", "C", "D"]
    assert decision["aggregated"] == ["B", "C"]
    assert decision["aggregator"] == "C"
    assert out["answer"] == answer_text("C", aggregating=True)
    assert out["error"] is None
    assert out["cost_usd"] == pytest.approx(4 * ANSWER_COST, abs=1e-12)
    assert elapsed < 5


def test_probe_that_fails_once_succeeds_on_its_retry(
    path_bank: tuple[Bank, Embedder], faults: FaultServer
) -> None:
    faults.set("A", "error500", times=1)
    out, _ = timed_invoke(fault_graph(path_bank, faults), PATH_QUERIES["agg3"])
    decision = out["decision"]
    (probe,) = [c for c in calls_of(decision) if c.model == "A" and c.role == "probe"]
    assert (probe.ok, probe.attempts) == (True, 2)
    assert decision["failures"] == {}
    assert decision["aggregated"] == ["A", "B", "C"]
    assert out["answer"] == answer_text("C", aggregating=True)


def test_rate_limit_longer_than_allowed_is_not_waited_for(
    path_bank: tuple[Bank, Embedder],
) -> None:
    with FaultServer(retry_after="30") as faults:
        faults.set("A", "ratelimit")
        out, elapsed = timed_invoke(fault_graph(path_bank, faults), PATH_QUERIES["agg3"])
        assert faults.counts["A"] == 1
    assert out["decision"]["failures"] == {
        "A": "rate_limited: HTTP 429 rate limited; Retry-After 30 s is longer than the 0.5 s "
        "allowed"
    }
    assert out["answer"] == answer_text("C", aggregating=True)
    assert elapsed < 3


def test_rate_limit_retry_after_is_waited_then_answered(
    path_bank: tuple[Bank, Embedder], faults: FaultServer
) -> None:
    faults.set("A", "ratelimit", times=1)  # Retry-After: 0.1
    out, _ = timed_invoke(fault_graph(path_bank, faults), PATH_QUERIES["agg3"])
    first, second = [r.at for r in faults.requests if r.model == "A"]
    assert second - first >= 0.1
    assert out["decision"]["failures"] == {}
    assert out["decision"]["aggregated"] == ["A", "B", "C"]


def test_reply_without_usage_is_charged_an_estimate(
    path_bank: tuple[Bank, Embedder], faults: FaultServer
) -> None:
    faults.set("A", "nousage")
    out, _ = timed_invoke(fault_graph(path_bank, faults), PATH_QUERIES["agg3"])
    calls = calls_of(out["decision"])
    (probe,) = [c for c in calls if c.model == "A"]
    assert probe.ok and probe.cost_source == "estimated"
    expected = estimate_usage(
        [HumanMessage(content=PATH_QUERIES["agg3"])], answer_text("A", aggregating=False)
    )
    assert (probe.input_tokens, probe.output_tokens) == expected
    assert probe.cost_usd == pytest.approx(
        (expected[0] * PRICES[0] + expected[1] * PRICES[1]) / 1e6, abs=1e-15
    )
    assert out["cost_usd"] == pytest.approx(sum(c.cost_usd for c in calls), abs=1e-12)
    assert [c.cost_source for c in calls if c.model != "A"] == ["prices"] * (len(calls) - 1)


def test_every_model_failing_is_an_error_result_naming_each(
    path_bank: tuple[Bank, Embedder], faults: FaultServer
) -> None:
    behaviours = ("ratelimit", "drop", "malformed", "cutbody")
    for name, behaviour in zip(PATH_MODELS, behaviours, strict=True):
        faults.set(name, behaviour)
    out, elapsed = timed_invoke(fault_graph(path_bank, faults), PATH_QUERIES["agg3"])
    assert out["answer"] == ""
    assert out["decision"]["mode"] == "error"
    # parallel probes' records are merged in task order: the order is stable
    assert out["error"] == (
        "no model answered ("
        "A: rate_limited: HTTP 429 rate limited; "
        "B: connection: the connection failed or was dropped; "
        "C: bad_response: malformed reply (JSONDecodeError); "
        "D: connection: the connection failed or was dropped)"
    )
    assert dict(faults.counts) == {name: 2 for name in PATH_MODELS}
    assert out["cost_usd"] == 0.0
    assert elapsed < 5


def test_query_time_is_bounded_when_every_model_hangs(
    path_bank: tuple[Bank, Embedder], faults: FaultServer
) -> None:
    for name in PATH_MODELS:
        faults.set(name, "slow")  # 3 s before any byte
    timeout, retries = 0.3, 1
    out, elapsed = timed_invoke(
        fault_graph(path_bank, faults), PATH_QUERIES["agg3"], timeout_s=timeout, max_retries=retries
    )
    assert out["decision"]["mode"] == "error"
    assert all(f"{name}: timeout" in out["error"] for name in PATH_MODELS)
    # One call: (retries + 1) attempts of `timeout` and `retries` waits of at most `timeout`.
    # Probes in parallel, then one round of candidates (D): two stages, well under 3 s.
    call_bound = (retries + 1) * timeout + retries * timeout
    assert elapsed < 2 * call_bound + 1.0
    assert dict(faults.counts) == {name: 2 for name in PATH_MODELS}


# ------------------------------------------------------------------------------------------
# `jisi serve` under faults: OpenAI error bodies, aggregator streams breaking, still serving
# ------------------------------------------------------------------------------------------


@pytest.fixture
def served(path_bank: tuple[Bank, Embedder], faults: FaultServer) -> Iterator[str]:
    """`jisi serve`'s app over the path bank and the fault pool; yields its base URL."""
    app = create_app(fault_graph(path_bank, faults), JisiContext(**CONTEXT))
    with serve_app(app) as base_url:
        yield base_url


def ask(base_url: str, query: str, **extra: Any) -> httpx.Response:
    body = {"model": "jisi", "messages": [{"role": "user", "content": query}], **extra}
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=30)


def events(reply: httpx.Response) -> list[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to [DONE] (which must end it)."""
    lines = [line for line in reply.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def streamed_text(payloads: list[dict[str, Any]]) -> str:
    return "".join(
        (p["choices"][0]["delta"].get("content") or "") for p in payloads if p.get("choices")
    )


def test_serve_every_model_failing_is_a_502_body_and_it_keeps_serving(
    served: str, faults: FaultServer
) -> None:
    for name in PATH_MODELS:
        faults.set(name, "error500")
    reply = ask(served, PATH_QUERIES["agg3"])
    assert reply.status_code == 502
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert (error["type"], error["code"]) == ("upstream_error", 502)
    assert error["message"].startswith("JiSi could not answer: no model answered (")
    for name in PATH_MODELS:
        assert f"{name}: server_error: HTTP 500 from the endpoint" in error["message"]

    streamed = ask(served, PATH_QUERIES["agg3"], stream=True)
    assert streamed.status_code == 200
    *_, last = events(streamed)
    assert last["error"]["code"] == 502
    assert "A: server_error: HTTP 500" in last["error"]["message"]

    for name in PATH_MODELS:
        faults.set(name, "ok")
    reply = ask(served, PATH_QUERIES["agg3"])
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"] == answer_text("C", True)


def test_serve_aggregator_stream_breaking_hands_over_and_says_so(
    served: str, faults: FaultServer
) -> None:
    faults.set("C", "streambreak", only="aggregating")  # answers as a probe, breaks twice
    payloads = events(ask(served, PATH_QUERIES["agg3"], stream=True))
    text = streamed_text(payloads)
    partial = "aggregate by"  # the two pieces C sends before it breaks
    assert text == partial + RESTART_NOTICE + partial + RESTART_NOTICE + answer_text("A", True)
    restarts = [p["jisi"]["restart"] for p in payloads if "restart" in p.get("jisi", {})]
    assert restarts == [
        {
            "discard_chars": len(partial + RESTART_NOTICE),
            "reason": "the aggregator's reply broke off",
        },
        {
            "discard_chars": len(2 * (partial + RESTART_NOTICE)),
            "reason": "the aggregator's reply broke off",
        },
    ]
    assert text[restarts[-1]["discard_chars"] :] == answer_text("A", True)
    (finish,) = [p for p in payloads if p.get("choices") and p["choices"][0]["finish_reason"]]
    summary = finish["jisi"]
    assert (summary["mode"], summary["aggregator"]) == ("aggregate", "A")
    assert summary["failures"] == {
        "C (aggregator)": "connection: the connection failed or was dropped"
    }
    assert faults.counts["C"] == 3  # one probe, two aggregation attempts


def test_serve_every_aggregator_breaking_routes_and_says_so(
    served: str, faults: FaultServer
) -> None:
    for name in ("A", "B", "C"):
        faults.set(name, "streambreak", only="aggregating")
    payloads = events(ask(served, PATH_QUERIES["agg3"], stream=True))
    text = streamed_text(payloads)
    restarts = [p["jisi"]["restart"] for p in payloads if "restart" in p.get("jisi", {})]
    # C, A, B: two attempts each, every one broken after "aggregate by"
    assert len(restarts) == 6
    assert restarts[-1]["reason"] == "every aggregator failed: routed"
    assert text[restarts[-1]["discard_chars"] :] == answer_text("A", False)
    (finish,) = [p for p in payloads if p.get("choices") and p["choices"][0]["finish_reason"]]
    assert finish["jisi"]["mode"] == "route"
    assert finish["jisi"]["answer_source"] == "A"
    assert finish["jisi"]["fallback"] == "every aggregator failed: routed to the top candidate"
    # without streaming, aggregators whose replies are cut short: the routed answer, only it
    for name in ("A", "B", "C"):
        faults.set(name, "cutbody", only="aggregating")
    reply = ask(served, PATH_QUERIES["agg3"])
    assert reply.json()["jisi"]["fallback"] == (
        "every aggregator failed: routed to the top candidate"
    )
    assert reply.json()["choices"][0]["message"]["content"] == answer_text("A", False)


def test_serve_unexpected_failure_is_a_500_body_without_details(
    path_bank: tuple[Bank, Embedder],
) -> None:
    def broken(_context: JisiContext) -> Resources:
        raise RuntimeError("internal detail that must not reach the client")

    app = create_app(build_graph(provider=broken), JisiContext(**CONTEXT))
    with serve_app(app) as base_url:
        reply = ask(base_url, "What is 6 x 7?")
        assert reply.status_code == 500
        assert reply.json() == {
            "error": {"message": "JiSi failed: RuntimeError", "type": "server_error", "code": 500}
        }
        *_, last = events(ask(base_url, "What is 6 x 7?", stream=True))
        assert last["error"]["message"] == "JiSi failed: RuntimeError"
        assert "internal detail" not in reply.text
        assert httpx.get(f"{base_url}/models", timeout=5).status_code == 200
