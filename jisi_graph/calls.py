"""One model call with a timeout and bounded retries; whatever happens comes back as a record.

Errors are described by kind (timeout, rate_limited, server_error, http_error, connection,
bad_response, empty, config, no_record, error) and a short message. The message never carries
a key: the client's own messages are reduced to their class and status, and any text that still
reaches a message has the model's key value (read from its `api_key_env`) masked.

Time bound of one call: at most `max_retries + 1` attempts of `timeout_s` each, and between
them waits of at most `min(timeout_s, MAX_BACKOFF_S)` (Retry-After when the endpoint sends one,
else exponential backoff). An endpoint whose Retry-After asks for longer than that is not
retried early against its wish: the call fails at once as rate_limited, saying so.

A reply without `usage` is not free: its tokens are estimated with the cl100k tokenizer (the
prompt's messages and the answer) and priced at the pool's prices, and the record's
`cost_source` says "estimated".
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_NOSTREAM

from jisi_graph.pool import ModelSpec, PoolError
from jisi_graph.state import CallRole, CostSource, ModelCall
from jisi_graph.tokens import count_tokens

RECORDED_COST_KEY = "recorded_cost_usd"
MAX_BACKOFF_S = 8.0
STATUS_HINTS = {
    404: " (an unknown model id, or a question that a replay server has no record of)",
}
"""What a bare status usually means, added to its message."""
_RETRYABLE = {"timeout", "rate_limited", "server_error", "connection", "bad_response", "empty"}


class EmptyReplyError(RuntimeError):
    """The model answered with no text."""


def call_model(
    chat_model: BaseChatModel,
    spec: ModelSpec,
    messages: Sequence[BaseMessage],
    *,
    role: CallRole,
    timeout_s: float,
    max_retries: int,
    temperature: float | None = None,
    stream_tokens: bool = False,
) -> ModelCall:
    """Call a model and return the record of the call, successful or not.

    Retries after a timeout, HTTP 429 (waiting as long as Retry-After says, if that fits in
    the wait allowed, see the module docstring), a server error, a dropped connection, a
    malformed or empty reply; a configuration error (a missing key variable) fails at once.
    `stream_tokens` lets LangGraph's "messages" stream carry the tokens; otherwise the call is
    tagged so that it does not.
    """
    config: RunnableConfig = {"run_name": f"jisi:{role}:{spec.name}"}
    if not stream_tokens:
        config["tags"] = [TAG_NOSTREAM]
    kwargs: dict[str, Any] = {"timeout": timeout_s}
    if temperature is not None:
        kwargs["temperature"] = temperature
    started = time.perf_counter()
    attempts = 0
    kind, message = "error", "no attempt made"
    longest_wait = min(timeout_s, MAX_BACKOFF_S)
    while attempts <= max_retries:
        attempts += 1
        try:
            reply = chat_model.invoke(list(messages), config=config, **kwargs)
            return _success(reply, spec, role, messages, attempts, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure becomes a record
            kind, message, wait = describe_error(error)
        if kind not in _RETRYABLE or attempts > max_retries:
            break
        if wait is not None and wait > longest_wait:
            message += f"; Retry-After {wait:g} s is longer than the {longest_wait:g} s allowed"
            break
        time.sleep(min(wait if wait is not None else 0.5 * 2 ** (attempts - 1), longest_wait))
    return ModelCall(
        model=spec.name,
        role=role,
        ok=False,
        error=redact(message, spec),
        error_kind=kind,
        attempts=attempts,
        cost_source="none",
        latency_s=round(time.perf_counter() - started, 4),
    )


def _success(
    reply: BaseMessage,
    spec: ModelSpec,
    role: CallRole,
    messages: Sequence[BaseMessage],
    attempts: int,
    latency: float,
) -> ModelCall:
    text = reply.text if isinstance(reply.content, list) else reply.content
    if not isinstance(text, str) or not text.strip():
        raise EmptyReplyError("the model returned an empty message")
    usage = reply.usage_metadata if isinstance(reply, AIMessage) else None
    recorded = reply.response_metadata.get(RECORDED_COST_KEY)
    source: CostSource
    if usage:
        input_tokens, output_tokens = int(usage["input_tokens"]), int(usage["output_tokens"])
        source = "prices"
    else:
        input_tokens, output_tokens = estimate_usage(messages, text)
        source = "estimated"
    if recorded is not None:
        cost, source = float(recorded), "recorded"
    else:
        cost = spec.cost(input_tokens, output_tokens)
    return ModelCall(
        model=spec.name,
        role=role,
        ok=True,
        answer=text,
        attempts=attempts,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        answer_tokens=count_tokens(text),
        cost_usd=cost,
        cost_source=source,
        latency_s=round(latency, 4),
        message_id=reply.id,
    )


def estimate_usage(messages: Sequence[BaseMessage], answer: str) -> tuple[int, int]:
    """(input, output) tokens of a call whose reply reported no usage, by the cl100k tokenizer.

    Each message counts its text plus 4 tokens of chat framing, as OpenAI's chat format does;
    an estimate, marked as such in the record (`cost_source="estimated"`).
    """
    prompt = sum(count_tokens(message.text) + 4 for message in messages)
    return prompt, count_tokens(answer)


def redact(message: str, spec: ModelSpec) -> str:
    """`message` with the value of the model's key variable masked, wherever it appears."""
    key = os.environ.get(spec.api_key_env, "") if spec.api_key_env else ""
    return message.replace(key, "[redacted]") if len(key) >= 4 else message


def describe_error(error: BaseException) -> tuple[str, str, float | None]:
    """(kind, short message, seconds to wait before retrying or None) for a failed call."""
    if isinstance(error, EmptyReplyError):
        return "empty", str(error), None
    if isinstance(error, PoolError):
        return "config", str(error), None
    if isinstance(error, LookupError):
        return "no_record", str(error)[:200], None
    try:
        import openai
    except ImportError:  # pragma: no cover - openai comes with langchain-openai
        openai = None  # type: ignore[assignment]
    if openai is not None:
        if isinstance(error, openai.APITimeoutError):
            return "timeout", "the call timed out", None
        if isinstance(error, openai.RateLimitError):
            return "rate_limited", "HTTP 429 rate limited", _retry_after(error)
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            kind = "server_error" if status >= 500 else "http_error"
            # The endpoint's own message is not repeated: error bodies can echo request headers.
            hint = STATUS_HINTS.get(status, "")
            return kind, f"HTTP {status} from the endpoint{hint}", _retry_after(error)
        if isinstance(error, openai.APIConnectionError):
            return "connection", "the connection failed or was dropped", None
        if isinstance(error, openai.APIResponseValidationError | ValueError):
            return "bad_response", f"malformed reply ({type(error).__name__})", None
    if isinstance(error, TimeoutError | httpx.TimeoutException):
        return "timeout", "the call timed out", None
    if isinstance(error, ConnectionError | httpx.TransportError):
        return "connection", "the connection failed or was dropped", None
    if isinstance(error, TypeError) and "'choices'" in str(error):
        # langchain-openai: a 200 reply whose JSON is not a chat completion
        return "bad_response", "malformed reply (no 'choices')", None
    if isinstance(error, ValueError):
        return "bad_response", f"malformed reply ({type(error).__name__})", None
    return "error", f"{type(error).__name__}: {str(error)[:200]}", None


def _retry_after(error: Any) -> float | None:
    """Seconds the endpoint asks to wait: Retry-After as seconds or as an HTTP date."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
