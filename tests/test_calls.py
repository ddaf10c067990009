"""One model call: error kinds, retries (Retry-After, backoff, none on config errors), empty
replies, usage and cost; and the real ChatOpenAI path against a loopback stub."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import openai
import pytest
from conftest import OpenAIStub, ScriptedChat
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field

from jisi_graph import calls
from jisi_graph.calls import MAX_BACKOFF_S, RECORDED_COST_KEY, EmptyReplyError, call_model
from jisi_graph.pool import ModelSpec, PoolError, openai_chat_model
from jisi_graph.replay import ReplayMissError

REQUEST = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
MESSAGES = [HumanMessage(content="What is 6 x 7?")]
SPEC = ModelSpec(name="m", input_price=2.0, output_price=6.0)


def status_error(cls: type[openai.APIStatusError], status: int, **headers: str) -> Exception:
    response = httpx.Response(status, headers=headers, request=REQUEST)
    return cls(f"status {status}", response=response, body=None)


class FlakyChat(BaseChatModel):
    """Raises the given errors one per call, then answers `reply`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    errors: list[BaseException] = Field(default_factory=list)
    reply: str = "42"
    metadata_extra: dict[str, Any] = Field(default_factory=dict)
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "flaky"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        message = AIMessage(
            content=self.reply,
            usage_metadata={"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500},
            response_metadata=dict(self.metadata_extra),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the pauses between attempts instead of sleeping."""
    waits: list[float] = []
    monkeypatch.setattr(calls.time, "sleep", waits.append)
    return waits


# ------------------------------------------------------------------------------------------
# describe_error
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "kind", "message", "wait"),
    [
        (EmptyReplyError("the model returned an empty message"), "empty", "empty message", None),
        (PoolError("environment variable K is not set"), "config", "K is not set", None),
        (ReplayMissError("no recorded answer"), "no_record", "no recorded answer", None),
        (openai.APITimeoutError(request=REQUEST), "timeout", "timed out", None),
        (openai.APIConnectionError(request=REQUEST), "connection", "connection failed", None),
        (
            status_error(openai.RateLimitError, 429, **{"retry-after": "3"}),
            "rate_limited",
            "HTTP 429",
            3.0,
        ),
        (status_error(openai.RateLimitError, 429), "rate_limited", "HTTP 429", None),
        (
            status_error(openai.RateLimitError, 429, **{"retry-after": "soon"}),
            "rate_limited",
            "HTTP 429",
            None,
        ),
        (status_error(openai.InternalServerError, 503), "server_error", "HTTP 503", None),
        (
            status_error(openai.InternalServerError, 502, **{"retry-after": "1.5"}),
            "server_error",
            "HTTP 502",
            1.5,
        ),
        (status_error(openai.BadRequestError, 400), "http_error", "HTTP 400", None),
        (
            status_error(openai.NotFoundError, 404),
            "http_error",
            "HTTP 404 from the endpoint (an unknown model id, or a question that a replay server",
            None,
        ),
        (TimeoutError("read timed out"), "timeout", "timed out", None),
        (httpx.ReadTimeout("read timed out"), "timeout", "timed out", None),
        (httpx.RemoteProtocolError("peer closed"), "connection", "dropped", None),
        (
            TypeError("Received response with null value for 'choices'."),
            "bad_response",
            "malformed reply (no 'choices')",
            None,
        ),
        (TypeError("unsupported operand"), "error", "TypeError: unsupported operand", None),
        (ConnectionResetError("reset"), "connection", "connection failed", None),
        (ValueError("not JSON"), "bad_response", "malformed reply (ValueError)", None),
        (RuntimeError("something else"), "error", "RuntimeError: something else", None),
    ],
)
def test_describe_error(error: Exception, kind: str, message: str, wait: float | None) -> None:
    got_kind, got_message, got_wait = calls.describe_error(error)
    assert got_kind == kind
    assert message in got_message
    assert got_wait == wait


def test_describe_error_never_repeats_the_clients_message() -> None:
    secret = "sk-live-0123456789abcdef"
    error = openai.AuthenticationError(
        f"Incorrect API key provided: {secret}",
        response=httpx.Response(401, request=REQUEST),
        body=None,
    )
    kind, message, _ = calls.describe_error(error)
    assert (kind, message) == ("http_error", "HTTP 401 from the endpoint")
    assert secret not in message


def test_describe_error_cuts_long_messages() -> None:
    _, message, _ = calls.describe_error(RuntimeError("x" * 1000))
    assert len(message) < 250


# ------------------------------------------------------------------------------------------
# call_model: retries
# ------------------------------------------------------------------------------------------


def test_retry_after_is_respected(sleeps: list[float]) -> None:
    model = FlakyChat(errors=[status_error(openai.RateLimitError, 429, **{"retry-after": "3"})])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=2)
    assert record.ok and record.attempts == 2
    assert sleeps == [3.0]


def test_retry_after_beyond_the_allowed_wait_fails_at_once(sleeps: list[float]) -> None:
    # not retried early against the endpoint's wish: the call fails now, saying why
    model = FlakyChat(errors=[status_error(openai.RateLimitError, 429, **{"retry-after": "600"})])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=30, max_retries=2)
    assert (record.ok, record.error_kind, record.attempts, model.calls) == (
        False,
        "rate_limited",
        1,
        1,
    )
    assert record.error == (
        f"HTTP 429 rate limited; Retry-After 600 s is longer than the {MAX_BACKOFF_S:g} s allowed"
    )
    assert sleeps == []


def test_retry_after_longer_than_the_timeout_is_not_waited(sleeps: list[float]) -> None:
    # the wait allowed is also bounded by one attempt's timeout
    model = FlakyChat(errors=[status_error(openai.RateLimitError, 429, **{"retry-after": "3"})])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=2, max_retries=2)
    assert (record.ok, record.attempts) == (False, 1)
    assert record.error is not None and record.error.endswith("longer than the 2 s allowed")
    assert sleeps == []


def test_retry_after_as_an_http_date(sleeps: list[float]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    model = FlakyChat(errors=[status_error(openai.RateLimitError, 429, **{"retry-after": when})])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=1)
    assert record.ok and record.attempts == 2
    (wait,) = sleeps
    assert 2.5 < wait <= 4.0  # whole seconds in the date: between 3 and 4 s from now


def test_backoff_is_bounded_by_the_timeout(sleeps: list[float]) -> None:
    errors = [status_error(openai.InternalServerError, 500) for _ in range(4)]
    record = call_model(
        FlakyChat(errors=errors), SPEC, MESSAGES, role="probe", timeout_s=0.8, max_retries=3
    )
    assert not record.ok and record.attempts == 4
    assert sleeps == [0.5, 0.8, 0.8]


def test_backoff_doubles_without_retry_after(sleeps: list[float]) -> None:
    errors = [status_error(openai.InternalServerError, 500) for _ in range(3)]
    model = FlakyChat(errors=errors)
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=2)
    assert not record.ok
    assert (record.error_kind, record.attempts, model.calls) == ("server_error", 3, 3)
    assert sleeps == [0.5, 1.0]  # no pause after the last attempt


def test_retries_are_bounded(sleeps: list[float]) -> None:
    model = FlakyChat(errors=[TimeoutError() for _ in range(10)])
    record = call_model(model, SPEC, MESSAGES, role="candidate", timeout_s=5, max_retries=4)
    assert (record.ok, record.error_kind, record.attempts, model.calls) == (
        False,
        "timeout",
        5,
        5,
    )
    assert record.role == "candidate"
    assert record.cost_usd == 0.0 and record.cost_source == "none"


def test_zero_retries_means_one_attempt(sleeps: list[float]) -> None:
    model = FlakyChat(errors=[TimeoutError()])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=0)
    assert (record.ok, record.attempts, model.calls) == (False, 1, 1)
    assert sleeps == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (PoolError("environment variable K is not set"), "config"),
        (status_error(openai.BadRequestError, 400), "http_error"),
        (ReplayMissError("no recorded answer"), "no_record"),
        (RuntimeError("bug"), "error"),
    ],
)
def test_no_retry_on_errors_a_retry_cannot_fix(
    sleeps: list[float], error: Exception, kind: str
) -> None:
    model = FlakyChat(errors=[error])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=3)
    assert (record.ok, record.error_kind, record.attempts, model.calls) == (False, kind, 1, 1)
    assert sleeps == []


@pytest.mark.parametrize("reply", ["", "   \n"])
def test_an_empty_reply_is_a_failure(sleeps: list[float], reply: str) -> None:
    model = ScriptedChat(model_name="m", reply=reply)
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=1)
    assert (record.ok, record.error_kind, record.attempts) == (False, "empty", 2)
    assert record.answer is None
    assert len(model.log) == 2


def test_an_empty_reply_then_an_answer_succeeds(sleeps: list[float]) -> None:
    model = FlakyChat(errors=[EmptyReplyError("the model returned an empty message")])
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=1)
    assert record.ok and record.attempts == 2 and record.answer == "42"


# ------------------------------------------------------------------------------------------
# call_model: the record of a success
# ------------------------------------------------------------------------------------------


def test_success_record_at_pool_prices(sleeps: list[float]) -> None:
    model = FlakyChat(reply="The answer is 42.")
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=0)
    assert record.ok and record.model == "m" and record.role == "probe"
    assert record.answer == "The answer is 42."
    assert (record.input_tokens, record.output_tokens) == (1000, 500)
    assert record.answer_tokens == 6
    # 1000 x $2 + 500 x $6 per million tokens
    assert record.cost_usd == pytest.approx(0.005, abs=1e-15)
    assert record.cost_source == "prices"
    assert record.message_id
    assert record.latency_s >= 0


class NoUsageChat(FlakyChat):
    """Answers `reply` without any usage, as some OpenAI-compatible servers do."""

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=self.reply))])


def test_reply_without_usage_is_estimated_and_priced(sleeps: list[float]) -> None:
    record = call_model(
        NoUsageChat(reply="The answer is 42."),
        SPEC,
        MESSAGES,
        role="probe",
        timeout_s=5,
        max_retries=0,
    )
    assert record.ok and record.cost_source == "estimated"
    # "What is 6 x 7?" is 8 cl100k tokens, plus 4 of chat framing; the answer is 6 tokens
    assert (record.input_tokens, record.output_tokens) == (12, 6)
    assert record.cost_usd == pytest.approx((12 * 2.0 + 6 * 6.0) / 1e6, abs=1e-15)


def test_estimate_usage_counts_every_message() -> None:
    messages = [SystemMessage(content="Be brief."), HumanMessage(content="What is 6 x 7?")]
    # "Be brief." 3 tokens, "What is 6 x 7?" 8, each + 4 of framing; "42" is one token
    assert calls.estimate_usage(messages, "42") == (3 + 4 + 8 + 4, 1)


def test_error_messages_never_hold_the_key(
    sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-fake-5e3cr3t-value"
    monkeypatch.setenv("JISI_TEST_CALL_KEY", key)
    spec = ModelSpec(name="m", api_key_env="JISI_TEST_CALL_KEY")
    model = FlakyChat(errors=[RuntimeError(f"auth failed for key {key}!")])
    record = call_model(model, spec, MESSAGES, role="probe", timeout_s=5, max_retries=0)
    assert record.error == "RuntimeError: auth failed for key [redacted]!"


def test_recorded_cost_wins_over_prices(sleeps: list[float]) -> None:
    model = FlakyChat(metadata_extra={RECORDED_COST_KEY: 0.0123})
    record = call_model(model, SPEC, MESSAGES, role="probe", timeout_s=5, max_retries=0)
    assert (record.cost_usd, record.cost_source) == (0.0123, "recorded")


def test_timeout_and_temperature_reach_the_model(sleeps: list[float]) -> None:
    model = ScriptedChat(model_name="m")
    call_model(model, SPEC, MESSAGES, role="probe", timeout_s=7.5, max_retries=0)
    call_model(
        model, SPEC, MESSAGES, role="aggregator", timeout_s=3.0, max_retries=0, temperature=0.7
    )
    assert model.log[0]["kwargs"] == {"timeout": 7.5}
    assert model.log[1]["kwargs"] == {"timeout": 3.0, "temperature": 0.7}


# ------------------------------------------------------------------------------------------
# The real ChatOpenAI path over loopback HTTP
# ------------------------------------------------------------------------------------------


def stub_spec(stub: OpenAIStub, model: str) -> ModelSpec:
    return ModelSpec(
        name="m", model=model, base_url=stub.base_url, input_price=1.0, output_price=2.0
    )


@pytest.mark.slow
def test_chat_openai_answers_with_usage_and_cost(openai_stub: OpenAIStub) -> None:
    spec = stub_spec(openai_stub, "m-ok")
    record = call_model(
        openai_chat_model(spec), spec, MESSAGES, role="probe", timeout_s=5, max_retries=0
    )
    assert record.ok and record.answer == "m-ok says the answer is 42"
    assert (record.input_tokens, record.output_tokens) == (120, 30)
    assert record.cost_usd == pytest.approx((120 * 1.0 + 30 * 2.0) / 1e6, abs=1e-15)
    (body,) = openai_stub.bodies
    assert body["model"] == "m-ok"
    assert body["messages"] == [{"role": "user", "content": "What is 6 x 7?"}]


@pytest.mark.slow
def test_chat_openai_honours_the_per_call_timeout(openai_stub: OpenAIStub) -> None:
    spec = stub_spec(openai_stub, "m-slow")  # the stub sleeps 2 s before answering
    started = time.perf_counter()
    record = call_model(
        openai_chat_model(spec), spec, MESSAGES, role="probe", timeout_s=0.3, max_retries=0
    )
    elapsed = time.perf_counter() - started
    assert (record.ok, record.error_kind) == (False, "timeout")
    assert elapsed < 1.5
    assert openai_stub.requests["m-slow"] == 1  # the client itself does not retry


@pytest.mark.slow
def test_chat_openai_retry_after_over_http(openai_stub: OpenAIStub, sleeps: list[float]) -> None:
    spec = stub_spec(openai_stub, "m-ratelimited")  # 429 with Retry-After: 0.2
    record = call_model(
        openai_chat_model(spec), spec, MESSAGES, role="probe", timeout_s=2, max_retries=2
    )
    assert (record.ok, record.error_kind, record.attempts) == (False, "rate_limited", 3)
    assert openai_stub.requests["m-ratelimited"] == 3
    assert sleeps == [0.2, 0.2]


@pytest.mark.slow
@pytest.mark.parametrize(("model", "kind"), [("m-error500", "server_error"), ("m-empty", "empty")])
def test_chat_openai_failures_over_http(
    openai_stub: OpenAIStub, sleeps: list[float], model: str, kind: str
) -> None:
    spec = stub_spec(openai_stub, model)
    record = call_model(
        openai_chat_model(spec), spec, MESSAGES, role="probe", timeout_s=2, max_retries=1
    )
    assert (record.ok, record.error_kind, record.attempts) == (False, kind, 2)
    assert openai_stub.requests[model] == 2


@pytest.mark.slow
def test_unreachable_endpoint_is_a_connection_failure(sleeps: list[float]) -> None:
    spec = ModelSpec(name="m", base_url="http://127.0.0.1:9/v1")  # discard port: refused
    record = call_model(
        openai_chat_model(spec), spec, MESSAGES, role="probe", timeout_s=2, max_retries=1
    )
    assert (record.ok, record.error_kind, record.attempts) == (False, "connection", 2)
