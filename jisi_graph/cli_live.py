"""The `jisi` commands that talk to models: ask, serve, replay-serve."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jisi_graph.cli_common import (
    bind_port,
    check_output_paths,
    fail,
    parse_overrides,
    serve_on,
    split_names,
)

HOST_HELP = "Interface to listen on (loopback unless told otherwise)"


def _context(bank: Path, pool: Path, overrides: list[str] | None) -> Any:
    from pydantic import ValidationError

    from jisi_graph.context import JisiContext

    knobs = parse_overrides(overrides)
    for name in ("bank", "pool"):
        if name in knobs:
            fail(f"invalid --set: {name} is given by --{name}, not by --set")
    try:
        return JisiContext(bank=str(bank), pool=str(pool), **knobs)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: "
            + ("no such knob" if item["type"] == "extra_forbidden" else item["msg"])
            for item in error.errors()
        )
        fail(f"invalid --set: {problems}")


def _graph(bank: Path, pool: Path, context: Any) -> Any:
    """Check the pool's keys first, then load the bank and pool once and compile a graph."""
    from jisi_graph.bank.manifest import BankMismatchError
    from jisi_graph.graph import build_graph
    from jisi_graph.pool import Pool, PoolError
    from jisi_graph.resources import CachedLoader, ConfigurationError

    try:
        missing = Pool.from_file(pool).missing_keys()
    except PoolError as error:
        fail(str(error))
    if missing:
        fail(f"key variables not set: {', '.join(missing)} (named by the pool's api_key_env)")
    try:
        resources = CachedLoader()(context)
    except (BankMismatchError, ConfigurationError) as error:
        fail(str(error))
    return build_graph(resources)


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer")],
    bank: Annotated[Path, typer.Option(help="Bank directory")],
    pool: Annotated[Path, typer.Option(help="Pool file (YAML)")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON")] = False,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a knob: NAME=VALUE")
    ] = None,
) -> None:
    """Answer one question with the pool and print the answer (or the whole decision)."""
    from jisi_graph.nodes.common import JisiInputError

    context = _context(bank, pool, overrides)
    graph = _graph(bank, pool, context)
    try:
        result = graph.invoke({"query": question}, context=context)
    except JisiInputError as error:
        fail(str(error))
    if as_json:
        shown = {
            key: result.get(key) for key in ("answer", "decision", "usage", "cost_usd", "error")
        }
        json.dump(shown, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
        if result.get("error"):
            raise typer.Exit(1)  # the JSON says why; the exit code says it failed
    elif result.get("error"):
        fail(result["error"], code=1)
    else:
        typer.echo(result["answer"])
        decision = result["decision"]
        typer.echo(
            f"[{decision['mode']} via {decision['answer_source']}; "
            f"{decision['usage'].get('calls', 0)} calls; ${result['cost_usd']:.6f}]",
            err=True,
        )


def serve(
    bank: Annotated[Path, typer.Option(help="Bank directory")],
    pool: Annotated[Path, typer.Option(help="Pool file (YAML)")],
    host: Annotated[str, typer.Option(help=HOST_HELP)] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one)", min=0, max=65535)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(envvar="JISI_SERVE_TOKEN", help="Require this bearer token (or env var)"),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted")] = 2_000_000,
    max_messages: Annotated[int, typer.Option(help="Most messages per request")] = 256,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a knob: NAME=VALUE")
    ] = None,
) -> None:
    """Serve JiSi as an OpenAI-compatible endpoint: /v1/chat/completions, model `jisi`."""
    from jisi_graph.server import create_app

    context = _context(bank, pool, overrides)
    graph = _graph(bank, pool, context)
    app = create_app(
        graph, context, token=token, max_body_bytes=max_body_bytes, max_messages=max_messages
    )
    sock = bind_port(host, port)
    port = sock.getsockname()[1]
    typer.echo(f"jisi serving on http://{host}:{port}/v1 (model 'jisi')", err=True)
    serve_on(app, sock)


def replay_serve(
    data: Annotated[str, typer.Option(help="JiSi rows to answer from (.jsonl, .jsonl.gz)")],
    host: Annotated[str, typer.Option(help=HOST_HELP)] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one)", min=0, max=65535)] = 8100,
    split: Annotated[
        str | None, typer.Option(help="Only rows of this split (default: all rows)")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models to serve (default: every one)")
    ] = None,
    write_pool: Annotated[
        Path | None,
        typer.Option(help="Also write a pool file (YAML) of the served models, priced as recorded"),
    ] = None,
) -> None:
    """Serve recorded answers as an OpenAI-compatible endpoint, one model per recorded model."""
    from jisi_graph.bank.loaders import load_rows
    from jisi_graph.bank.schema import BankFormatError
    from jisi_graph.replay import ReplayTable
    from jisi_graph.replay_server import create_replay_app

    check_output_paths(write_pool=write_pool)
    try:
        chosen = split_names(models)
        rows = load_rows(data, split=split, models=chosen)
    except (BankFormatError, FileNotFoundError) as error:
        fail(str(error))
    served = chosen or list(dict.fromkeys(name for row in rows for name in row.raw_output))
    app = create_replay_app(ReplayTable(rows), served)
    sock = bind_port(host, port)
    port = sock.getsockname()[1]
    if write_pool is not None:
        from jisi_graph.recorded_prices import write_replay_pool

        write_replay_pool(write_pool, f"http://{host}:{port}/v1", rows, served)
        typer.echo(f"wrote the pool file {write_pool} ({len(served)} models)", err=True)
    typer.echo(
        f"replaying {len(rows)} rows as {len(served)} models on http://{host}:{port}/v1", err=True
    )
    serve_on(app, sock)


def register(app: typer.Typer) -> None:
    """Add these commands to the `jisi` app."""
    app.command("ask")(ask)
    app.command("serve")(serve)
    app.command("replay-serve")(replay_serve)
