"""The OpenAI chat-completions wire format: request checks, replies, chunks and error bodies.

Shared by `jisi serve` (JiSi behind an OpenAI-compatible endpoint) and `jisi replay-serve`
(recorded models behind one). A request that cannot be served raises `ApiError`, which the
servers turn into an OpenAI-shaped error body with its HTTP status.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from jisi_graph.text import first_lone_surrogate

ROLES = {"system": SystemMessage, "developer": SystemMessage, "user": HumanMessage}


class ApiError(Exception):
    """An error to send back as an OpenAI error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """Status code, a message for the client, and the OpenAI error type."""
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """The OpenAI-shaped error body."""
        return {"error": {"message": self.message, "type": self.kind, "code": self.status}}


def parse_request(raw: bytes, *, max_bytes: int, max_messages: int) -> dict[str, Any]:
    """Decode and check a chat-completions request body (size, UTF-8, JSON, messages)."""
    if len(raw) > max_bytes:
        raise ApiError(413, f"request body exceeds {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(400, f"request body is not valid JSON: {error.msg}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list")
    if len(messages) > max_messages:
        raise ApiError(400, f"too many messages: {len(messages)} > {max_messages}")
    for flag in ("stream", "jisi_decision"):
        if body.get(flag) is not None and not isinstance(body[flag], bool):
            raise ApiError(400, f"'{flag}' must be true or false")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object")
    return body


def to_langchain(messages: Sequence[Any]) -> list[BaseMessage]:
    """OpenAI chat messages as LangChain messages; the last user turn must not be empty."""
    converted: list[BaseMessage] = []
    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(400, f"messages[{position}] must be an object")
        role, content = message.get("role"), content_text(message.get("content"))
        if content is None:
            raise ApiError(400, f"messages[{position}].content must be text")
        if first_lone_surrogate(content) is not None:  # a JSON escape such as "\ud800"
            raise ApiError(
                400, f"messages[{position}].content is not valid Unicode (a lone surrogate)"
            )
        if role == "assistant":
            converted.append(AIMessage(content=content))
        elif role in ROLES:
            converted.append(ROLES[role](content=content))
        else:
            raise ApiError(400, f"messages[{position}].role {role!r} is not supported")
    if not any(isinstance(m, HumanMessage) for m in converted):
        raise ApiError(400, "the messages hold no user turn to answer")
    last_user = next(m for m in reversed(converted) if isinstance(m, HumanMessage))
    if not str(last_user.content).strip():
        raise ApiError(400, "the last user message is empty")
    return converted


def content_text(content: Any) -> str | None:
    """Text of an OpenAI message content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text") for part in content if isinstance(part, dict)]
        if all(isinstance(part, str) for part in parts):
            return "".join(parts)
    return None


def last_user_text(messages: Sequence[Any]) -> str | None:
    """The text of the last user message of an OpenAI request, if any."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return None


def completion_id() -> str:
    """A fresh chat-completion id."""
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_block(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The OpenAI `usage` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    model: str, text: str, usage: dict[str, int] | None, *, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A non-streaming chat.completion reply."""
    reply: dict[str, Any] = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        reply["usage"] = usage
    if extra:
        reply.update(extra)
    return reply


def chunk(
    chunk_id: str,
    model: str,
    *,
    content: str | None = None,
    role: str | None = None,
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """One server-sent event of a streaming reply."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": []
        if usage is not None and not delta and finish is None
        else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = usage
    if extra:
        body.update(extra)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
