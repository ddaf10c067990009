"""Helpers shared by the `jisi` commands: clean errors and `--set NAME=VALUE` knobs."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, NoReturn

import typer

from jisi_graph.context import knob_value


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error for the user (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def split_names(value: str | None) -> list[str] | None:
    """`"a, b,c"` as `["a", "b", "c"]`; None or only commas as None."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    return names or None


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["top_k=5", "aggregation=vote"]` as `{"top_k": 5, "aggregation": "vote"}`.

    Values are read as JSON when they parse (numbers, true/false, null), else as strings;
    JisiContext then validates names and values.
    """
    overrides: dict[str, Any] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            fail(f"--set takes NAME=VALUE, got {item!r}")
        overrides[name.strip()] = knob_value(raw)
    return overrides


PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")
"""File types the accuracy-cost plots can be written as."""


def check_output_paths(*, plot: Path | None = None, **outputs: Path | None) -> None:
    """Refuse, before any work, an output that could not be written; create missing folders.

    `outputs` maps an option's name (`json`, `markdown`, ...) to its path; `plot` also needs a
    suffix matplotlib writes.
    """
    named = {**outputs, "plot": plot}
    for option, path in named.items():
        if path is None:
            continue
        flag = "--" + option.replace("_", "-")
        if path.is_dir():
            fail(f"{flag} {path} is a directory; give a file name")
        parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
        if parent is not None and not parent.is_dir():
            fail(f"{flag} {path}: {parent} is not a directory")
        if option == "plot" and path.suffix.lower() not in PLOT_SUFFIXES:
            fail(f"--plot {path}: the plot is written as {', '.join(PLOT_SUFFIXES)}")
    for path in named.values():
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)


def bind_port(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (0: any free port), or a clean error if it is taken.

    Bound before anything is announced or written, so that a pool file names a server that is up.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
    return sock


def serve_on(app: Any, sock: socket.socket) -> None:
    """Run an ASGI app with uvicorn on an already bound socket."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
