"""Benchmarks 2 (throughput) and 5 (memory): `jisi eval` on the ZeroEval test split.

    .venv/bin/python benchmarks/bench_eval.py               # banks/zeroeval-open, 3 runs

Runs `jisi eval --data ../shared/data/zeroeval_gsm8k_math.jsonl.gz --bank <bank> --pool
<OPEN_POOL>` in a child process (replayed answers, no model is called), and prints its wall time
(whole process, and the graph's own part from the report), rows per second, peak resident memory
and JiSi's macro accuracy. The query side embeds with $JISI_EMBEDDER_RUNTIME (`--runtime`).
Targets: the 613 test rows in under 60 s once the bank is built; memory reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    OPEN_POOL,
    ZEROEVAL,
    ZEROEVAL_BANK,
    Spread,
    header,
    jisi_argv,
    load_line,
    run_measured,
)

TARGET_SECONDS = 60.0


def jisi_macro(report: dict) -> float:
    """JiSi's macro accuracy (%) from a `jisi eval --json` report."""
    methods = report["methods"]
    name = "jisi" if "jisi" in methods else next(m for m in methods if m.startswith("jisi"))
    return 100.0 * float(methods[name]["accuracy_macro"])


def eval_once(
    bank: Path,
    data: Path,
    pool: str,
    runtime: str | None,
    limit: int | None,
    scratch: Path,
    extra: Sequence[str] = (),
) -> dict[str, float]:
    """One measured `jisi eval`; wall times, rows, peak RSS and JiSi's macro accuracy."""
    report_path = scratch / "report.json"
    argv = jisi_argv(
        "eval", "--data", str(data), "--bank", str(bank), "--pool", pool,
        "--json", str(report_path),
    )  # fmt: skip
    if limit is not None:
        argv += ["--limit", str(limit)]
    argv += list(extra)
    run = run_measured(argv, env={"JISI_EMBEDDER_RUNTIME": runtime} if runtime else None)
    if run.code != 0:
        raise RuntimeError(f"jisi eval failed ({run.code}):\n{run.stderr[-2000:]}")
    report = json.loads(report_path.read_text())
    rows = float(report["run"]["rows"])
    return {
        "wall": run.wall,
        "graph_wall": float(report["run"]["wall_seconds"]),
        "rows": rows,
        "rows_per_s": rows / run.wall,
        "peak_mib": run.peak_mib,
        "jisi_macro": jisi_macro(report),
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Run `jisi eval` several times and print the figures; returns every run."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, default=ZEROEVAL_BANK, help="a built bank")
    parser.add_argument("--data", type=Path, default=ZEROEVAL, help="the data file")
    parser.add_argument("--pool", default=OPEN_POOL, help="the pool (default: open-weight)")
    parser.add_argument("--runtime", default=None, help="query-side embedder runtime")
    parser.add_argument("--repeats", type=int, default=3, help="runs")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test rows")
    parser.add_argument(
        "--uncalibrated", action="store_true", help="pass --uncalibrated (the paper's knobs)"
    )
    args = parser.parse_args(argv)
    if not (args.bank / "manifest.json").is_file():
        raise SystemExit(f"no bank at {args.bank}: build it first (make eval, or jisi bank build)")
    header("jisi eval: throughput and peak memory")
    print(
        f"bank {args.bank}, data {args.data}, query runtime {args.runtime or 'default'}"
        + (", uncalibrated" if args.uncalibrated else "")
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="jisi-bench-eval-") as scratch:
        for repeat in range(args.repeats):
            before = load_line()
            figures = eval_once(
                args.bank,
                args.data,
                args.pool,
                args.runtime,
                args.limit,
                Path(scratch),
                ["--uncalibrated"] if args.uncalibrated else [],
            )
            runs.append(figures)
            print(
                f"run {repeat + 1}: {figures['rows']:.0f} rows in {figures['wall']:.1f} s "
                f"(graph {figures['graph_wall']:.1f} s), {figures['rows_per_s']:.1f} rows/s, "
                f"peak RSS {figures['peak_mib']:.0f} MiB, JiSi macro {figures['jisi_macro']:.2f}%; "
                f"before: {before}; after: {load_line()}"
            )
    wall = Spread.of([r["wall"] for r in runs])
    graph = Spread.of([r["graph_wall"] for r in runs])
    print(
        f"wall {wall.format(1, ' s')}, graph {graph.format(1, ' s')}, "
        f"rows/s {Spread.of([r['rows_per_s'] for r in runs]).format(1)}, peak RSS "
        f"{Spread.of([r['peak_mib'] for r in runs]).format(0, ' MiB')}; target < "
        f"{TARGET_SECONDS:.0f} s: " + ("met" if wall.median < TARGET_SECONDS else "MISSED")
    )
    return runs


if __name__ == "__main__":
    main()
