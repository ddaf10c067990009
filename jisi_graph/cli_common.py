"""Helpers shared by the `jisi` commands: clean errors and `--set NAME=VALUE` knobs."""

from __future__ import annotations

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
