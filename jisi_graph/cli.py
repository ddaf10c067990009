"""The `jisi` command line: build and inspect banks, ask, evaluate, serve.

Heavy modules are imported inside each command, so `jisi --help` is instant.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from jisi_graph.cli_calibrate import register as register_calibrate_command
from jisi_graph.cli_common import check_output_paths, fail, split_names
from jisi_graph.cli_live import register as register_live_commands

DEFAULT_ANSWER_WINDOW = 0
"""Tokens kept per answer by `jisi bank build` (0: the whole window). A shorter cut builds faster
but costs calibrated JiSi about a point on ZeroEval (docs/performance.md)."""

app = typer.Typer(
    help="JiSi: route and aggregate a pool of LLMs with an embedding bank.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bank_app = typer.Typer(help="Build and inspect embedding banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")


@bank_app.command("build")
def bank_build(
    data: Annotated[str, typer.Argument(help="JiSi rows: .jsonl, .jsonl.gz, a folder, hf://id")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the bank to")],
    split: Annotated[str, typer.Option(help="Rows of this split form the bank")] = "train",
    models: Annotated[
        str | None, typer.Option(help="Comma-separated models to keep (default: all)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows (quick tests)")] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedder: a Hub id or local path (default: bundled MiniLM)")
    ] = None,
    embedder_runtime: Annotated[
        str | None,
        typer.Option(
            help="Embedder runtime: openvino-int8 (fastest), openvino (bfloat16), torch-bf16 or "
            "torch (float32); default: $JISI_EMBEDDER_RUNTIME, else openvino-int8"
        ),
    ] = None,
    window: Annotated[
        int | None,
        typer.Option(
            help="Tokens kept per text, its last ones (default: the embedder's own, 256 for "
            "MiniLM); queries are embedded with the bank's window"
        ),
    ] = None,
    answer_window: Annotated[
        int,
        typer.Option(
            help="Tokens kept per model answer, its last ones (0: the whole window); fewer "
            "tokens embed faster, and the probes' answers are cut the same way"
        ),
    ] = DEFAULT_ANSWER_WINDOW,
    votable: Annotated[
        str | None, typer.Option(help="Datasets whose answers can be voted on (comma-separated)")
    ] = None,
    not_votable: Annotated[
        str | None, typer.Option(help="Datasets whose answers must not be voted on")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing bank at --out")] = False,
) -> None:
    """Embed a data file's queries and answers once and write a bank directory."""
    from jisi_graph.bank.build import BankExistsError, build_bank, check_bank_target, write_bank
    from jisi_graph.bank.loaders import file_sha256, load_rows
    from jisi_graph.bank.manifest import SourceRecord
    from jisi_graph.bank.schema import BankFormatError
    from jisi_graph.embedding import MIN_WINDOW, load_embedder

    if limit is not None and limit < 1:
        fail("--limit must be at least 1")
    if answer_window < 0 or 0 < answer_window < MIN_WINDOW:
        fail(f"--answer-window must be 0 (the whole window) or at least {MIN_WINDOW} tokens")
    try:
        check_bank_target(out, force=force)
    except BankExistsError as error:
        fail(str(error))
    started = time.perf_counter()
    try:
        rows = load_rows(data, split=split, models=split_names(models), limit=limit)
    except (BankFormatError, FileNotFoundError) as error:
        fail(str(error))
    declared = {name: True for name in split_names(votable) or []}
    declared.update({name: False for name in split_names(not_votable) or []})
    unknown = sorted(set(declared) - {row.dataset for row in rows})
    if unknown:
        fail(f"--votable/--not-votable name datasets not in the data: {', '.join(unknown)}")
    typer.echo(f"{len(rows)} {split} rows from {data}; loading the embedder...", err=True)
    try:
        model = load_embedder(embedder, runtime=embedder_runtime, window=window)
    except (ValueError, OSError) as error:
        fail(f"cannot load the embedder {embedder or 'default'!r}: {error}")
    local = Path(data)
    source = SourceRecord(
        path=str(local.resolve()) if local.exists() else data,
        sha256=file_sha256(local) if local.is_file() else None,
        split=split,
        limit=limit,
    )
    try:
        bank = build_bank(
            rows,
            model,
            source=source,
            models=split_names(models),
            votable=declared,
            answer_window=answer_window or None,
            progress=True,
        )
    except ValueError as error:
        fail(str(error))
    try:
        target = write_bank(bank, out, force=force)
    except BankExistsError as error:
        fail(str(error))
    elapsed = time.perf_counter() - started
    manifest = bank.manifest
    typer.echo(
        f"bank written to {target}: {manifest.rows} rows, {len(manifest.models)} models, "
        f"{manifest.answers} answers ({manifest.distinct_texts} distinct texts embedded) "
        f"in {elapsed:.1f} s ({manifest.build_seconds:.1f} s embedding and building arrays) "
        f"with the {model.runtime} runtime"
        + (
            f" (answers cut to their last {manifest.embedder.answer_window} tokens)"
            if manifest.embedder.answer_window
            else ""
        )
        + "; votable: "
        + ", ".join(f"{name}={flag}" for name, flag in manifest.votable.items())
    )


@bank_app.command("info")
def bank_info(
    directory: Annotated[Path, typer.Argument(help="A bank directory")],
    verify: Annotated[bool, typer.Option(help="Check every file against the manifest")] = True,
) -> None:
    """Print a bank's manifest as JSON (after checking its files)."""
    from jisi_graph.bank.manifest import BankMismatchError
    from jisi_graph.bank.store import Bank

    try:
        started = time.perf_counter()
        bank = Bank.load(directory, verify=verify)
        load_seconds = time.perf_counter() - started
    except BankMismatchError as error:
        fail(str(error))
    report = bank.manifest.model_dump()
    report["load_seconds"] = round(load_seconds, 3)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")


@app.command("eval")
def eval_command(
    data: Annotated[str, typer.Option("--data", help="JiSi rows to evaluate on (.jsonl[.gz])")],
    bank: Annotated[Path, typer.Option("--bank", help="A bank directory (jisi bank build)")],
    split: Annotated[str, typer.Option(help="Rows of this split are asked")] = "test",
    pool: Annotated[
        str | None, typer.Option(help="Comma-separated pool models (default: the bank's)")
    ] = None,
    references: Annotated[
        str | None, typer.Option(help="Comma-separated models outside the pool, for comparison")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the JSON report")] = None,
    markdown: Annotated[Path | None, typer.Option(help="Write a markdown report")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a cost-accuracy plot (PNG)")] = None,
    rows_out: Annotated[
        Path | None, typer.Option("--rows", help="Write one JSON line per row (debugging)")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows of the split")] = None,
    concurrency: Annotated[int, typer.Option(help="Rows run at once (threads)")] = 4,
    knobs: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a JisiContext knob: KNOB=VALUE (repeatable)"),
    ] = None,
    sweep: Annotated[
        bool, typer.Option("--sweep", help="Sweep each method's knob; plot accuracy vs cost")
    ] = False,
    sweep_grid: Annotated[
        list[str] | None,
        typer.Option(help="JiSi sweep axis KNOB=V1,V2,... (repeatable: product; default: cost)"),
    ] = None,
    alphas: Annotated[
        str | None, typer.Option(help="Avengers-Pro alphas for --sweep (default 0 to 1 by 0.05)")
    ] = None,
    uncalibrated: Annotated[
        bool,
        typer.Option(
            "--uncalibrated", help="Ignore the bank's calibration: the paper's configuration"
        ),
    ] = False,
) -> None:
    """Run the graph on held-out rows with replayed answers; score JiSi and the baselines."""
    from jisi_graph.bank.manifest import BankMismatchError
    from jisi_graph.bank.schema import BankFormatError
    from jisi_graph.evaluate import EvalConfigError, evaluate, parse_overrides
    from jisi_graph.report import format_table, render_markdown, write_json, write_plot, write_rows

    if limit is not None and limit < 1:
        fail("--limit must be at least 1")
    if concurrency < 1:
        fail("--concurrency must be at least 1")
    if not sweep and (sweep_grid or alphas is not None):
        fail("--sweep-grid and --alphas only apply with --sweep")
    check_output_paths(json=json_out, markdown=markdown, plot=plot, rows=rows_out)
    try:
        overrides = parse_overrides(knobs or [])
        if uncalibrated:
            overrides["calibrated"] = "false"
        if sweep:
            from jisi_graph.cli_sweep import run_sweep_command

            return run_sweep_command(
                data=data,
                bank=bank,
                split=split,
                pool=split_names(pool),
                references=split_names(references) or [],
                limit=limit,
                concurrency=concurrency,
                overrides=overrides,
                grid_items=sweep_grid or [],
                alphas=alphas,
                json_out=json_out,
                markdown=markdown,
                plot=plot,
                rows_out=rows_out,
            )
        report = evaluate(
            data,
            bank,
            split=split,
            pool=split_names(pool),
            references=split_names(references) or [],
            limit=limit,
            concurrency=concurrency,
            overrides=overrides,
        )
    except (EvalConfigError, BankMismatchError, BankFormatError, OSError) as error:
        fail(str(error))
    typer.echo(format_table(report))
    stats = report.jisi
    typer.echo(
        f"\n{report.run['rows']} rows in {report.run['wall_seconds']} s; jisi aggregated "
        f"{100 * stats.get('aggregated_fraction', 0):.1f}% (vote "
        f"{100 * stats.get('vote_fraction', 0):.1f}%), routed "
        f"{100 * stats.get('routed_fraction', 0):.1f}%, {stats.get('mean_calls', 0):.2f} calls "
        f"per row, {stats.get('failures', 0)} failed calls, {stats.get('error_rows', 0)} error rows"
    )
    calibrated = report.run.get("calibrated_knobs") or {}
    typer.echo(
        "knobs from the bank's calibration: "
        + ", ".join(f"{knob}={value}" for knob, value in calibrated.items())
        if calibrated
        else f"no calibrated knobs: {report.run.get('calibration')}"
    )
    for path, writer in (
        (json_out, write_json),
        (markdown, lambda r, p: Path(p).write_text(render_markdown(r), encoding="utf-8")),
        (plot, write_plot),
        (rows_out, write_rows),
    ):
        if path is not None:
            writer(report, path)
            typer.echo(f"wrote {path}", err=True)


register_live_commands(app)
register_calibrate_command(app)


def main() -> None:
    """Entry point for `python -m jisi_graph`."""
    app()
