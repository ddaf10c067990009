"""`jisi serve`: JiSi behind an OpenAI-compatible endpoint (model name `jisi`).

`POST /v1/chat/completions` (streaming and not) runs the graph on the request's messages and
answers in the OpenAI format, with the usage of every call JiSi made and a `jisi` field holding
the decision's summary (the whole decision when the request sets `"jisi_decision": true`).
`GET /v1/models` lists `jisi`. Errors come back as OpenAI error bodies: 400 for a request that
cannot be answered (checked before the graph runs), 401 without the bearer token, 413 for a body
over the cap, 502 when no model of the pool answered (naming each one's failure), 500 for
anything else (its class only, never its message).

Streaming and a broken aggregator: tokens already sent cannot be taken back. When the
aggregator's stream breaks off (or a retry of it starts over) and another attempt or the routed
answer follows, the stream sends a visible notice (`RESTART_NOTICE`) and a chunk whose `jisi`
field is `{"restart": {"discard_chars": N, "reason": ...}}`: the answer is the streamed content
after its first N characters. The final chunk's summary lists the failures.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from langchain_core.messages import AIMessageChunk
from langgraph.graph.state import CompiledStateGraph

from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import JisiInputError
from jisi_graph.nodes.embed import MAX_QUERY_CHARS
from jisi_graph.openai_compat import (
    DONE,
    ApiError,
    chunk,
    completion,
    completion_id,
    last_user_text,
    parse_request,
    to_langchain,
    usage_block,
)

MODEL_NAME = "jisi"
DEFAULT_MAX_BODY_BYTES = 2_000_000
DEFAULT_MAX_MESSAGES = 256
WORKER_THREADS = 64
RESTART_NOTICE = "\n\n[jisi: the answer above broke off; the full answer follows]\n\n"


def create_app(
    graph: CompiledStateGraph,
    context: JisiContext,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_messages: int = DEFAULT_MAX_MESSAGES,
) -> FastAPI:
    """The app serving `graph` with `context`; `token`, if set, is the required bearer token."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Graph nodes are synchronous and wait on model calls: give them enough threads.
        executor = ThreadPoolExecutor(max_workers=WORKER_THREADS, thread_name_prefix="jisi")
        asyncio.get_running_loop().set_default_executor(executor)
        yield
        executor.shutdown(wait=False, cancel_futures=True)

    # With a token, the API description is not served either: every route is behind it.
    hidden = {"docs_url": None, "redoc_url": None, "openapi_url": None} if token else {}
    app = FastAPI(title="jisi serve", lifespan=lifespan, **hidden)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, error: Exception) -> JSONResponse:
        failure = ApiError(500, f"JiSi failed: {type(error).__name__}", "server_error")
        return JSONResponse(failure.body(), status_code=500)

    def authorise(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # the scheme is case-insensitive (RFC 9110); the token is compared in constant time
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            raise ApiError(401, "missing or wrong bearer token", "authentication_error")

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorise(request)
        return {
            "object": "list",
            "data": [{"id": MODEL_NAME, "object": "model", "owned_by": "jisi-graph"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        authorise(request)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise ApiError(413, f"request body exceeds {max_body_bytes} bytes")
        body = parse_request(
            await request.body(), max_bytes=max_body_bytes, max_messages=max_messages
        )
        messages = to_langchain(body["messages"])
        query = last_user_text(body["messages"]) or ""
        if len(query) > MAX_QUERY_CHARS:
            raise ApiError(
                400, f"the query is {len(query)} characters long; at most {MAX_QUERY_CHARS}"
            )
        want_decision = bool(body.get("jisi_decision"))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _stream(graph, context, messages, include_usage, want_decision),
                media_type="text/event-stream",
            )
        result = await _run(graph, context, messages)
        return completion(
            MODEL_NAME,
            result["answer"],
            _usage(result),
            extra={"jisi": _summary(result, want_decision)},
        )

    return app


async def _run(graph: CompiledStateGraph, context: JisiContext, messages: list) -> dict[str, Any]:
    try:
        result = await graph.ainvoke({"messages": messages}, context=context)
    except JisiInputError as error:
        raise ApiError(400, str(error)) from None
    if result.get("error"):
        raise ApiError(502, f"JiSi could not answer: {result['error']}", "upstream_error")
    return result


async def _stream(
    graph: CompiledStateGraph,
    context: JisiContext,
    messages: list,
    include_usage: bool,
    want_decision: bool,
) -> AsyncIterator[str]:
    chunk_id = completion_id()
    yield chunk(chunk_id, MODEL_NAME, role="assistant", content="")
    sent_chars = 0  # content characters sent so far
    attempt_id: str | None = None  # the aggregator reply being streamed
    attempt: list[str] = []  # its text so far
    final: dict[str, Any] = {}
    try:
        async for mode, payload in graph.astream(
            {"messages": messages}, context=context, stream_mode=["messages", "values"]
        ):
            if mode == "values":
                final = payload
                continue
            message, metadata = payload
            if metadata.get("langgraph_node") != "aggregate" or not isinstance(
                message, AIMessageChunk
            ):
                continue
            if message.id != attempt_id:
                if attempt:  # another attempt starts over: the one streamed so far broke off
                    sent_chars += len(RESTART_NOTICE)
                    yield _restart(chunk_id, sent_chars, "the aggregator's reply broke off")
                attempt_id, attempt = message.id, []
            text = message.text
            if text:
                attempt.append(text)
                sent_chars += len(text)
                yield chunk(chunk_id, MODEL_NAME, content=text)
    except JisiInputError as error:
        yield _error_event(400, str(error))
        return
    except Exception as error:  # noqa: BLE001 - the stream must end with an error event
        yield _error_event(500, f"JiSi failed: {type(error).__name__}")
        return
    if final.get("error"):
        if attempt:
            sent_chars += len(RESTART_NOTICE)
            yield _restart(chunk_id, sent_chars, "no model answered")
        yield _error_event(502, f"JiSi could not answer: {final['error']}")
        return
    answer = final.get("answer", "")
    if "".join(attempt) != answer:
        # Routed or voted (nothing streamed), or every aggregator's stream broke off and the
        # top candidate's answer follows in full.
        if attempt:
            sent_chars += len(RESTART_NOTICE)
            yield _restart(chunk_id, sent_chars, "every aggregator failed: routed")
        yield chunk(chunk_id, MODEL_NAME, content=answer)
    yield chunk(chunk_id, MODEL_NAME, finish="stop", extra={"jisi": _summary(final, want_decision)})
    if include_usage:
        yield chunk(chunk_id, MODEL_NAME, usage=_usage(final))
    yield DONE


def _restart(chunk_id: str, discard_chars: int, reason: str) -> str:
    """The notice that the streamed answer starts over, for people and for programs."""
    restart = {"discard_chars": discard_chars, "reason": reason}
    return chunk(chunk_id, MODEL_NAME, content=RESTART_NOTICE, extra={"jisi": {"restart": restart}})


def _error_event(status: int, message: str) -> str:
    kind = "invalid_request_error" if status == 400 else "upstream_error"
    return f"data: {json.dumps(ApiError(status, message, kind).body())}\n\n{DONE}"


def _usage(result: dict[str, Any]) -> dict[str, int]:
    usage = result.get("usage") or {}
    return usage_block(int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)))


def _summary(result: dict[str, Any], whole: bool) -> dict[str, Any]:
    decision = result.get("decision") or {}
    if whole:
        return {"cost_usd": result.get("cost_usd", 0.0), "decision": decision}
    return {
        "cost_usd": result.get("cost_usd", 0.0),
        "mode": decision.get("mode"),
        "answer_source": decision.get("answer_source"),
        "aggregator": decision.get("aggregator"),
        "probes": decision.get("probes", []),
        "candidates": [c["model"] for c in decision.get("candidates", [])],
        "switch_n": decision.get("switch_n"),
        "failures": decision.get("failures", {}),
        "fallback": decision.get("fallback"),
    }
