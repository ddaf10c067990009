"""One model call with a timeout and bounded retries; whatever happens comes back as a record.

Errors are described by kind (timeout, rate_limited, server_error, connection, bad_response,
empty, config) and a short message; the message never carries a key, because keys are never
placed in a message here and the client's own messages are reduced to their class and status.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_NOSTREAM

from jisi_graph.pool import ModelSpec, PoolError
from jisi_graph.state import CallRole, ModelCall
from jisi_graph.tokens import count_tokens

RECORDED_COST_KEY = "recorded_cost_usd"
MAX_BACKOFF_S = 8.0
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

    Retries after a timeout, HTTP 429 (waiting as long as Retry-After says, capped), a server
    error, a dropped connection, a malformed or empty reply; a configuration error (a missing key
    variable) fails at once. `stream_tokens` lets LangGraph's "messages" stream carry the tokens;
    otherwise the call is tagged so that it does not.
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
    while attempts <= max_retries:
        attempts += 1
        try:
            reply = chat_model.invoke(list(messages), config=config, **kwargs)
            return _success(reply, spec, role, attempts, time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - every failure becomes a record
            kind, message, wait = describe_error(error)
        if kind not in _RETRYABLE or attempts > max_retries:
            break
        time.sleep(min(wait if wait is not None else 0.5 * 2 ** (attempts - 1), MAX_BACKOFF_S))
    return ModelCall(
        model=spec.name,
        role=role,
        ok=False,
        error=message,
        error_kind=kind,
        attempts=attempts,
        cost_source="none",
        latency_s=round(time.perf_counter() - started, 4),
    )


def _success(
    reply: BaseMessage, spec: ModelSpec, role: CallRole, attempts: int, latency: float
) -> ModelCall:
    text = reply.text if isinstance(reply.content, list) else reply.content
    if not isinstance(text, str) or not text.strip():
        raise EmptyReplyError("the model returned an empty message")
    usage = reply.usage_metadata if isinstance(reply, AIMessage) else None
    input_tokens = int(usage["input_tokens"]) if usage else 0
    output_tokens = int(usage["output_tokens"]) if usage else 0
    recorded = reply.response_metadata.get(RECORDED_COST_KEY)
    if recorded is not None:
        cost, source = float(recorded), "recorded"
    else:
        cost, source = spec.cost(input_tokens, output_tokens), "prices"
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
            return kind, f"HTTP {status} from the endpoint", _retry_after(error)
        if isinstance(error, openai.APIConnectionError):
            return "connection", "the connection failed or was dropped", None
        if isinstance(error, openai.APIResponseValidationError | ValueError):
            return "bad_response", f"malformed reply ({type(error).__name__})", None
    if isinstance(error, TimeoutError):
        return "timeout", "the call timed out", None
    if isinstance(error, ConnectionError):
        return "connection", "the connection failed or was dropped", None
    if isinstance(error, ValueError):
        return "bad_response", f"malformed reply ({type(error).__name__})", None
    return "error", f"{type(error).__name__}: {str(error)[:200]}", None


def _retry_after(error: Any) -> float | None:
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
