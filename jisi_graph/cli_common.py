"""Helpers shared by the `jisi` commands: clean errors and `--set NAME=VALUE` knobs."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import typer


def fail(message: str, code: int = 2) -> NoReturn:
    """Print an error for the user (no traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


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
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides[name.strip()] = value
    return overrides
