"""A fault-injecting OpenAI-compatible server on loopback, for the fault tests.

Each model id answers as its behaviour says (set with `FaultServer.set`, default "ok"):

- ok: a normal reply (streamed in small pieces when the request streams);
- slow: sleeps `slow_s` before answering (past the caller's timeout);
- ratelimit: HTTP 429 with `Retry-After: <retry_after>`;
- error500: HTTP 500 with an error body;
- drop: closes the connection without any reply;
- malformed: HTTP 200 whose body is not JSON;
- wrongshape: HTTP 200 with JSON that is not a chat completion;
- empty: a reply whose message is empty;
- nousage: a reply (or stream) without `usage`;
- streambreak: a streamed reply that sends a few pieces, then drops the connection (a request
  that does not stream is answered normally);
- cutbody: a reply whose body is cut short of its Content-Length, then the connection dropped;
- echoheaders: HTTP 401 whose error message repeats every request header (the key included),
  as a careless endpoint might.

`times=n` makes a model misbehave for its first n requests only, then answer normally;
`only="aggregating"` (or "answering") only on aggregation requests (a system message first), or
only on the others: a model can answer as a probe and fail as the aggregator. Every
request's model, body and headers are kept, so a test can count attempts and see what was sent.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = (
    "ok",
    "slow",
    "ratelimit",
    "error500",
    "drop",
    "malformed",
    "wrongshape",
    "empty",
    "nousage",
    "streambreak",
    "cutbody",
    "echoheaders",
)
PIECE_CHARS = 6
USAGE = {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150}


def answer_text(model: str, aggregating: bool) -> str:
    """What a well-behaved model of this server answers."""
    return f"aggregate by {model}" if aggregating else f"{model} says the answer is 42"


@dataclass
class Request:
    """One request as the server received it."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]  # names in lower case
    at: float = field(default_factory=time.monotonic)


class FaultServer:
    """`/v1/chat/completions` with a behaviour per model id; start with `with FaultServer():`."""

    def __init__(self, slow_s: float = 3.0, retry_after: str = "0.1") -> None:
        """A server on an ephemeral loopback port (not yet serving)."""
        self.slow_s = slow_s
        self.retry_after = retry_after
        self.requests: list[Request] = []
        self.counts: Counter[str] = Counter()
        self._behaviours: dict[str, tuple[str, int | None, str | None]] = {}
        self.answers: dict[str, str] = {}
        """Answer texts by model, replacing `answer_text` for requests that are not
        aggregations."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                try:
                    server.handle(self, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- control ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`http://127.0.0.1:PORT/v1`)."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def set(
        self, model: str, behaviour: str, times: int | None = None, only: str | None = None
    ) -> None:
        """Make `model` misbehave as `behaviour` (for its next `times` requests, or always;
        on aggregation requests only, `only="aggregating"`, or on the others, "answering")."""
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        if only not in (None, "aggregating", "answering"):
            raise ValueError(f"unknown request kind {only!r}")
        with self._lock:
            self._behaviours[model] = (behaviour, times, only)

    def behaviour(self, model: str, aggregating: bool) -> str:
        """The behaviour of this request of `model` (consumes one of its `times`)."""
        with self._lock:
            behaviour, times, only = self._behaviours.get(model, ("ok", None, None))
            if only is not None and only != ("aggregating" if aggregating else "answering"):
                return "ok"
            if times is not None:
                if times <= 0:
                    return "ok"
                self._behaviours[model] = (behaviour, times - 1, only)
            return behaviour

    def start(self) -> FaultServer:
        """Serve in a daemon thread."""
        self.thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wake sleeping handlers, and free the port."""
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- handling --------------------------------------------------------------------------

    def handle(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        """Answer one chat-completions request as its model's behaviour says."""
        model = str(body.get("model"))
        with self._lock:
            headers = {key.lower(): value for key, value in handler.headers.items()}
            self.requests.append(Request(model, body, headers))
            self.counts[model] += 1
        messages = body.get("messages") or [{}]
        aggregating = messages[0].get("role") == "system"
        behaviour = self.behaviour(model, aggregating)
        text = self.answers.get(model) if not aggregating else None
        if text is None:
            text = answer_text(model, aggregating)
        if behaviour == "empty":
            text = ""
        streaming = bool(body.get("stream"))
        if behaviour == "slow":
            self._stop.wait(self.slow_s)
        if behaviour == "ratelimit":
            self._json(handler, 429, _error("slow down"), {"Retry-After": self.retry_after})
        elif behaviour == "error500":
            self._json(handler, 500, _error("internal failure"))
        elif behaviour == "echoheaders":
            headers = "; ".join(f"{k}: {v}" for k, v in handler.headers.items())
            self._json(handler, 401, _error(f"bad credentials, you sent {headers}"))
        elif behaviour == "drop":
            _drop(handler)
        elif behaviour == "malformed":
            self._raw(handler, 200, b'{"id": "x", "choices": [{"message": {"content": "4')
        elif behaviour == "wrongshape":
            self._json(handler, 200, {"result": text})
        elif streaming:
            self._stream(handler, model, text, behaviour, body)
        elif behaviour == "cutbody":
            data = json.dumps(_completion(model, text, USAGE)).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            _drop(handler, reset=False)
        else:
            usage = None if behaviour == "nousage" else USAGE
            self._json(handler, 200, _completion(model, text, usage))

    def _stream(
        self,
        handler: BaseHTTPRequestHandler,
        model: str,
        text: str,
        behaviour: str,
        body: dict[str, Any],
    ) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        events = list(_events(model, text))
        if behaviour == "streambreak":
            for event in events[:3]:
                _write_chunk(handler, event)
            _drop(handler, reset=False)
            return
        for event in events:
            _write_chunk(handler, event)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if include_usage and behaviour != "nousage":
            _write_chunk(handler, _sse({**_chunk_base(model), "choices": [], "usage": USAGE}))
        _write_chunk(handler, b"data: [DONE]\n\n")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    @staticmethod
    def _json(
        handler: BaseHTTPRequestHandler,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        FaultServer._raw(handler, status, json.dumps(payload).encode(), headers)

    @staticmethod
    def _raw(
        handler: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "code": None}}


def _completion(model: str, text: str, usage: dict[str, int] | None) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": f"chatcmpl-{model}-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": 0,
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
    return reply


def _chunk_base(model: str) -> dict[str, Any]:
    return {"id": f"chatcmpl-{model}", "object": "chat.completion.chunk", "created": 0}


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


def _events(model: str, text: str) -> Iterator[bytes]:
    base = {**_chunk_base(model), "model": model}
    yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    for start in range(0, len(text), PIECE_CHARS):
        delta = {"content": text[start : start + PIECE_CHARS]}
        yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})


def _write_chunk(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def _drop(handler: BaseHTTPRequestHandler, *, reset: bool = True) -> None:
    """Close the connection now: with a reset (nothing more is read), or after what was sent
    (`reset=False`: the client reads the pieces already sent, then finds the body cut)."""
    handler.close_connection = True
    sock = handler.connection
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


@contextmanager
def serve_app(app: Any, deadline_s: float = 20.0) -> Iterator[str]:
    """Serve `app` on a free loopback port in a thread; yields its base URL (`.../v1`)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + deadline_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
