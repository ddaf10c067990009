"""`jisi replay-serve`: an OpenAI-compatible server that answers as each recorded model.

The request's `model` names a model of the data; the last user message is the query. The reply
is that model's recorded answer with its recorded token usage, so the live path (`ChatOpenAI`
over HTTP) can be run end to end without any real endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from jisi_graph.openai_compat import (
    DONE,
    ApiError,
    chunk,
    completion,
    completion_id,
    last_user_text,
    parse_request,
    usage_block,
)
from jisi_graph.replay import RecordedAnswer, ReplayMissError, ReplayTable

MAX_BODY_BYTES = 8_000_000
STREAM_PIECE_CHARS = 16


def create_replay_app(table: ReplayTable, models: list[str]) -> FastAPI:
    """The replay server's app over a table of recorded answers."""
    app = FastAPI(title="jisi replay-serve")
    known = set(models)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "replay"} for name in models],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> object:
        body = parse_request(await request.body(), max_bytes=MAX_BODY_BYTES, max_messages=1000)
        model = body.get("model")
        if model not in known:
            raise ApiError(404, f"model {model!r} is not in the replayed data", "not_found_error")
        query = last_user_text(body["messages"])
        if query is None:
            raise ApiError(400, "the messages hold no user turn to answer")
        try:
            recorded = table.answer(model, query)
        except ReplayMissError as error:
            raise ApiError(404, str(error), "not_found_error") from None
        usage = usage_block(recorded.prompt_tokens, recorded.completion_tokens)
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(
                _stream(model, recorded, usage if include_usage else None),
                media_type="text/event-stream",
            )
        return completion(model, recorded.text, usage)

    return app


def _stream(model: str, recorded: RecordedAnswer, usage: dict | None) -> Iterator[str]:
    chunk_id = completion_id()
    yield chunk(chunk_id, model, role="assistant", content="")
    text = recorded.text
    for start in range(0, len(text), STREAM_PIECE_CHARS):
        yield chunk(chunk_id, model, content=text[start : start + STREAM_PIECE_CHARS])
    yield chunk(chunk_id, model, finish="stop")
    if usage is not None:
        yield chunk(chunk_id, model, usage=usage)
    yield DONE
