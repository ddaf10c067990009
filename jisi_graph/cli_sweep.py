"""The `--sweep` branch of `jisi eval`: run the sweep and write its table, JSON, markdown, plot."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import typer


def run_sweep_command(
    *,
    data: str,
    bank: Path,
    split: str,
    pool: Sequence[str] | None,
    references: Sequence[str],
    limit: int | None,
    concurrency: int,
    overrides: Mapping[str, Any],
    grid_items: Sequence[str],
    alphas: str | None,
    json_out: Path | None,
    markdown: Path | None,
    plot: Path | None,
    rows_out: Path | None,
) -> None:
    """Run `jisi_graph.sweep.sweep` and write its outputs (errors propagate to the caller).

    `rows_out` receives the base run's per-row records.
    """
    from jisi_graph.report import write_rows
    from jisi_graph.sweep import parse_alphas, parse_grid, sweep
    from jisi_graph.sweep_report import format_sweep_table, render_sweep_markdown, write_sweep_plot

    grid = parse_grid(grid_items) if grid_items else None
    report = sweep(
        data,
        bank,
        split=split,
        pool=pool,
        references=references,
        limit=limit,
        concurrency=concurrency,
        overrides=overrides,
        grid=grid,
        alphas=parse_alphas(alphas),
    )
    typer.echo(format_sweep_table(report))
    typer.echo(f"\nsweep of {report.run['rows']} rows in {report.run['wall_seconds']} s")
    writers = (
        (json_out, lambda p: Path(p).write_text(json.dumps(report.to_dict(), indent=2) + "\n")),
        (markdown, lambda p: Path(p).write_text(render_sweep_markdown(report), encoding="utf-8")),
        (plot, lambda p: write_sweep_plot(report, p)),
        (rows_out, lambda p: write_rows(report.base, p)),
    )
    for path, writer in writers:
        if path is not None:
            writer(path)
            typer.echo(f"wrote {path}", err=True)
