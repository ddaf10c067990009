"""`jisi calibrate`: choose a bank's knobs by cross-validation and store them with the bank."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from jisi_graph.cli_common import fail, split_names


def calibrate_command(
    bank: Annotated[Path, typer.Option("--bank", help="A bank directory (jisi bank build)")],
    target_budget: Annotated[
        float | None,
        typer.Option(help="Cost cap in USD per query (default: the best single model's cost)"),
    ] = None,
    target_accuracy: Annotated[
        float | None,
        typer.Option(help="Macro accuracy to reach at least cost, in (0, 1] (e.g. 0.8)"),
    ] = None,
    folds: Annotated[int, typer.Option(help="Cross-validation folds over the bank's rows")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold shuffle")] = 42,
    pool: Annotated[
        str | None, typer.Option(help="Comma-separated pool models (default: the bank's)")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="The file the bank was built from (default: the manifest's source)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the choice without writing calibration.json")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the whole calibration as JSON")
    ] = False,
) -> None:
    """Choose the knobs that matter by K-fold CV over the bank's own rows; store them."""
    from jisi_graph.bank.manifest import BankMismatchError
    from jisi_graph.bank.schema import BankFormatError
    from jisi_graph.calibrate import CalibrateError, calibrate

    names = split_names(pool)
    try:
        result = calibrate(
            bank,
            pool=names,
            folds=folds,
            seed=seed,
            target_budget=target_budget,
            target_accuracy=target_accuracy,
            data=data,
            write=not dry_run,
            progress=True,
        )
    except (CalibrateError, BankMismatchError, BankFormatError) as error:
        fail(str(error))
    if json_out:
        json.dump(result.model_dump(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    chosen = result.chosen
    typer.echo(
        "chosen: "
        + ", ".join(f"{knob}={value}" for knob, value in result.knobs.items())
        + f"\nCV ({result.folds} folds, {result.rows} rows): macro "
        f"{100 * chosen['accuracy_macro']:.1f}%, {chosen['cost_per_query']:.6g} USD per query, "
        f"{chosen['mean_calls']:.2f} calls, routed without probes "
        f"{100 * chosen['direct_fraction']:.0f}%"
    )
    for name in ("best-single-on-bank", "query-knn", "paper-config"):
        figures = result.baselines[name]
        label = f"{name} ({figures['model']})" if "model" in figures else name
        typer.echo(
            f"  {label}: macro {100 * figures['accuracy_macro']:.1f}%, "
            f"{figures['cost_per_query']:.6g} USD per query"
        )
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(
        ("not written (--dry-run)" if dry_run else f"wrote {Path(bank) / 'calibration.json'}")
        + f" in {result.seconds:.1f} s",
        err=True,
    )


def register(app: typer.Typer) -> None:
    """Add `jisi calibrate` to the `jisi` app."""
    app.command("calibrate")(calibrate_command)
