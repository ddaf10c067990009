"""`jisi serve` end to end, as real processes talking HTTP on loopback.

`jisi replay-serve` answers as each recorded model of the shared test split; `jisi serve` runs
the graph over the session's real bank with a pool whose models live at that replay server; the
tests talk to it with the official `openai` client (and raw `httpx` for malformed requests), and
compare what it answers with the graph run in this process over the same bank and rows.

In process, replay models report the recorded cost of each answer; over HTTP, cost is tokens x
the pool's prices. So answers, decisions and token usage must match, and cost is checked
against the prices.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import REAL_MODELS
from live_servers import (
    REPLAY_KEY_ENV,
    REPLAY_KEY_VALUE,
    REPLAY_PRICES,
    ServerProcess,
    child_env,
    jisi,
    priced_cost,
    start_server,
    write_pool,
)
from openai import OpenAI

from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.replay import replay_pool
from jisi_graph.resources import Resources

pytestmark = pytest.mark.slow

TOKEN = "serve-test-token-5f2c"
MAX_BODY_BYTES = 64_000
MAX_MESSAGES = 16
SUMMARY_KEYS = {
    "cost_usd",
    "mode",
    "answer_source",
    "aggregator",
    "probes",
    "candidates",
    "switch_n",
    "failures",
    "fallback",
}


# ------------------------------------------------------------------------------------------
# Fixtures: one replay server (session) and one `jisi serve` (this module)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jisi_server(
    replay_endpoint: str, real_bank_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("serve")
    pool = write_pool(workdir / "pool.yaml", replay_endpoint, REAL_MODELS)
    server = start_server(
        "jisi-serve",
        lambda port: jisi(
            "serve",
            "--bank",
            str(real_bank_dir),
            "--pool",
            str(pool),
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--max-messages",
            str(MAX_MESSAGES),
        ),
        log_dir=workdir,
        env=child_env(**{REPLAY_KEY_ENV: REPLAY_KEY_VALUE}),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(jisi_server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=jisi_server.base_url, api_key=TOKEN, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(
    real_bank: Bank, embedder: Embedder, real_test_rows: list[BankRow]
) -> dict[str, dict[str, Any]]:
    """The in-process result of each test question, by question."""
    graph = build_graph(Resources(real_bank, embedder, replay_pool(real_test_rows, REAL_MODELS)))
    results = {row.query: graph.invoke({"query": row.query}) for row in real_test_rows}
    assert all(result["error"] is None for result in results.values())
    return results


def post(
    server: ServerProcess, content: bytes, *, token: str | None = TOKEN, **headers: str
) -> httpx.Response:
    sent = {"Content-Type": "application/json", **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return httpx.post(
        f"{server.base_url}/chat/completions", content=content, headers=sent, timeout=60
    )


def ask_body(question: str, **extra: Any) -> bytes:
    return json.dumps(
        {"model": "jisi", "messages": [{"role": "user", "content": question}], **extra}
    ).encode()


def assert_error(reply: httpx.Response, status: int, kind: str, says: str) -> None:
    """An OpenAI error body: {"error": {"message", "type", "code"}}, with this status."""
    assert reply.status_code == status
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["type"] == kind
    assert error["code"] == status
    assert says in error["message"]


def call_keys(decision: dict[str, Any]) -> list[tuple[str, str, int, int, bool]]:
    """(model, role, input tokens, output tokens, ok) of every call, in a stable order."""
    return sorted(
        (c["model"], c["role"], c["input_tokens"], c["output_tokens"], c["ok"])
        for c in decision["calls"]
    )


def check_same_decision(served: dict[str, Any], local: dict[str, Any]) -> None:
    """What JiSi decided over HTTP is what it decided in process."""
    for key in ("mode", "answer_source", "aggregator", "probes", "switch_n", "aggregated"):
        assert served[key] == local[key], key
    assert [c["model"] for c in served["candidates"]] == [c["model"] for c in local["candidates"]]
    assert [n["id"] for n in served["neighbours"]] == [n["id"] for n in local["neighbours"]]
    assert served["routing_scores"] == pytest.approx(local["routing_scores"], abs=1e-5)
    assert call_keys(served) == call_keys(local)
    assert served["usage"] == local["usage"]
    assert served["failures"] == {}


# ------------------------------------------------------------------------------------------
# Answers: non-streaming, streaming, concurrent, multi-turn
# ------------------------------------------------------------------------------------------


def test_models_lists_jisi(client: OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["jisi"]


def test_answers_and_usage_match_the_graph_in_process(
    client: OpenAI, expected: dict[str, dict[str, Any]]
) -> None:
    for question, local in expected.items():
        reply = client.chat.completions.create(
            model="jisi",
            messages=[{"role": "user", "content": question}],
            extra_body={"jisi_decision": True},
        )
        assert reply.object == "chat.completion"
        assert reply.model == "jisi"
        (choice,) = reply.choices
        assert choice.finish_reason == "stop"
        assert choice.message.role == "assistant"
        assert choice.message.content == local["answer"]
        assert reply.usage is not None
        assert reply.usage.prompt_tokens == local["usage"]["input_tokens"]
        assert reply.usage.completion_tokens == local["usage"]["output_tokens"]
        assert reply.usage.total_tokens == (
            local["usage"]["input_tokens"] + local["usage"]["output_tokens"]
        )

        extra = reply.model_extra["jisi"]
        decision = extra["decision"]
        check_same_decision(decision, local["decision"])
        # Cost over HTTP: every call's tokens at the pool's prices (in process: recorded cost).
        for call in decision["calls"]:
            assert call["cost_source"] == "prices"
            assert call["cost_usd"] == pytest.approx(priced_cost([call], REPLAY_PRICES), abs=1e-12)
        assert extra["cost_usd"] == pytest.approx(
            priced_cost(local["decision"]["calls"], REPLAY_PRICES), abs=1e-9
        )
        assert extra["cost_usd"] > 0
        assert all(c["cost_source"] == "recorded" for c in local["decision"]["calls"])


def test_summary_is_returned_without_the_whole_decision(
    client: OpenAI, expected: dict[str, dict[str, Any]]
) -> None:
    question, local = next(iter(expected.items()))
    reply = client.chat.completions.create(
        model="jisi", messages=[{"role": "user", "content": question}]
    )
    summary = reply.model_extra["jisi"]
    assert set(summary) == SUMMARY_KEYS
    decision = local["decision"]
    assert summary["mode"] == decision["mode"]
    assert summary["answer_source"] == decision["answer_source"]
    assert summary["aggregator"] == decision["aggregator"]
    assert summary["probes"] == decision["probes"]
    assert summary["candidates"] == [c["model"] for c in decision["candidates"]]
    assert summary["switch_n"] == decision["switch_n"]
    assert summary["failures"] == {}
    assert summary["cost_usd"] == pytest.approx(
        priced_cost(decision["calls"], REPLAY_PRICES), abs=1e-9
    )


def test_streaming_matches_the_graph_in_process(
    client: OpenAI, expected: dict[str, dict[str, Any]]
) -> None:
    for question, local in expected.items():
        stream = client.chat.completions.create(
            model="jisi",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert len({chunk.id for chunk in chunks}) == 1
        assert all(chunk.model == "jisi" for chunk in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        pieces = [
            chunk.choices[0].delta.content
            for chunk in chunks
            if chunk.choices and chunk.choices[0].delta.content
        ]
        assert "".join(pieces) == local["answer"]
        if local["decision"]["mode"] == "aggregate":
            # the aggregator's tokens arrive as they come, not as one block at the end
            assert len(pieces) > 1
        finishes = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
        assert len(finishes) == 1 and finishes[0].choices[0].finish_reason == "stop"
        summary = finishes[0].model_extra["jisi"]
        assert summary["mode"] == local["decision"]["mode"]
        assert summary["answer_source"] == local["decision"]["answer_source"]
        assert summary["cost_usd"] == pytest.approx(
            priced_cost(local["decision"]["calls"], REPLAY_PRICES), abs=1e-9
        )
        # the usage chunk comes last, with no choices
        last = chunks[-1]
        assert last.choices == []
        assert last.usage is not None
        assert last.usage.prompt_tokens == local["usage"]["input_tokens"]
        assert last.usage.completion_tokens == local["usage"]["output_tokens"]
        assert all(chunk.usage is None for chunk in chunks[:-1])


def test_streaming_without_include_usage_sends_no_usage(
    client: OpenAI, expected: dict[str, dict[str, Any]]
) -> None:
    question, local = next(iter(expected.items()))
    chunks = list(
        client.chat.completions.create(
            model="jisi", messages=[{"role": "user", "content": question}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == local["answer"]
    assert all(chunk.usage is None for chunk in chunks)


def test_concurrent_requests_each_get_their_own_answer(
    client: OpenAI, expected: dict[str, dict[str, Any]]
) -> None:
    questions = list(expected) * 2

    def ask(question: str) -> tuple[str, str | None]:
        reply = client.chat.completions.create(
            model="jisi", messages=[{"role": "user", "content": question}]
        )
        return question, reply.choices[0].message.content

    with ThreadPoolExecutor(max_workers=len(questions)) as pool:
        answers = list(pool.map(ask, questions))
    assert len(answers) == len(questions)
    for question, answer in answers:
        assert answer == expected[question]["answer"]


def test_the_last_user_turn_of_a_conversation_is_answered(
    client: OpenAI, expected: dict[str, dict[str, Any]]
) -> None:
    first, second = list(expected)[:2]
    reply = client.chat.completions.create(
        model="jisi",
        messages=[
            {"role": "system", "content": "You solve grade-school maths."},
            {"role": "user", "content": first},
            {"role": "assistant", "content": expected[first]["answer"]},
            {"role": "user", "content": [{"type": "text", "text": second}]},
        ],
    )
    assert reply.choices[0].message.content == expected[second]["answer"]


# ------------------------------------------------------------------------------------------
# Refusals: OpenAI error bodies, and the server goes on serving
# ------------------------------------------------------------------------------------------


def test_no_user_turn_is_a_400(client: OpenAI, jisi_server: ServerProcess) -> None:
    body = {"model": "jisi", "messages": [{"role": "system", "content": "be brief"}]}
    assert_error(
        post(jisi_server, json.dumps(body).encode()),
        400,
        "invalid_request_error",
        "no user turn",
    )
    # streaming requests are refused the same way, before any event is sent
    assert_error(
        post(jisi_server, json.dumps({**body, "stream": True}).encode()),
        400,
        "invalid_request_error",
        "no user turn",
    )
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model="jisi", messages=[{"role": "system", "content": "be brief"}]
        )
    assert raised.value.status_code == 400
    assert raised.value.body["type"] == "invalid_request_error"


def test_empty_last_user_turn_is_a_400(jisi_server: ServerProcess) -> None:
    assert_error(post(jisi_server, ask_body("   ")), 400, "invalid_request_error", "empty")


def test_bearer_token_is_required(jisi_server: ServerProcess, expected: dict[str, Any]) -> None:
    question = next(iter(expected))
    for token in (None, "wrong-token", TOKEN + "x"):
        assert_error(
            post(jisi_server, ask_body(question), token=token),
            401,
            "authentication_error",
            "bearer token",
        )
    reply = httpx.get(f"{jisi_server.base_url}/models", timeout=10)
    assert_error(reply, 401, "authentication_error", "bearer token")
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=jisi_server.base_url, api_key="nope", max_retries=0).models.list()


def test_oversized_body_is_a_413(jisi_server: ServerProcess) -> None:
    body = ask_body("x" * MAX_BODY_BYTES)
    assert len(body) > MAX_BODY_BYTES
    assert_error(post(jisi_server, body), 413, "invalid_request_error", str(MAX_BODY_BYTES))


def test_non_utf8_body_is_a_400(jisi_server: ServerProcess) -> None:
    body = b'{"model": "jisi", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}'
    assert_error(post(jisi_server, body), 400, "invalid_request_error", "UTF-8")


def test_invalid_json_is_a_400(jisi_server: ServerProcess) -> None:
    assert_error(post(jisi_server, b'{"messages": ['), 400, "invalid_request_error", "JSON")
    assert_error(post(jisi_server, b"[1, 2]"), 400, "invalid_request_error", "JSON object")


def test_too_many_messages_is_a_400(jisi_server: ServerProcess) -> None:
    messages = [{"role": "user", "content": f"question {i}"} for i in range(MAX_MESSAGES + 1)]
    body = json.dumps({"model": "jisi", "messages": messages}).encode()
    assert_error(post(jisi_server, body), 400, "invalid_request_error", "too many messages")


def test_unsupported_role_is_a_400(jisi_server: ServerProcess) -> None:
    body = {"model": "jisi", "messages": [{"role": "tool", "content": "x"}]}
    assert_error(post(jisi_server, json.dumps(body).encode()), 400, "invalid_request_error", "role")


def test_server_keeps_serving_after_errors(
    client: OpenAI, jisi_server: ServerProcess, expected: dict[str, dict[str, Any]]
) -> None:
    # runs after the refusals above: the same process still answers, and still lists jisi
    assert jisi_server.process.poll() is None
    question, local = list(expected.items())[-1]
    reply = client.chat.completions.create(
        model="jisi", messages=[{"role": "user", "content": question}]
    )
    assert reply.choices[0].message.content == local["answer"]
    assert [model.id for model in client.models.list()] == ["jisi"]
    assert "Traceback" not in jisi_server.log_text()
