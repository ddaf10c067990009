"""Benchmark 4: bank build wall time, texts embedded per second and peak memory.

    .venv/bin/python benchmarks/bench_build.py              # the default runtime, once
    .venv/bin/python benchmarks/bench_build.py --runtimes openvino,openvino-int8 --repeats 3
    .venv/bin/python benchmarks/bench_build.py --answer-window 128

Builds the ZeroEval bank of the README's open-weight pool,
`jisi bank build ../shared/data/zeroeval_gsm8k_math.jsonl.gz --models <OPEN_POOL>`, into a
temporary directory (never into `banks/`), each run in a child process whose peak resident
memory is measured. The converted (and quantized) OpenVINO model is cached after its first
use, so the first run of a fresh machine also pays about 30 s of conversion. Target: under 3
minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OPEN_POOL, ZEROEVAL, Spread, header, jisi_argv, load_line, run_measured  # noqa: E402

TARGET_SECONDS = 180.0


def build_once(
    data: Path, runtime: str, out: Path, models: str, answer_window: int = 0
) -> dict[str, float]:
    """One measured `jisi bank build`; its wall time, texts per second and peak RSS."""
    argv = jisi_argv(
        "bank", "build", str(data), "--out", str(out), "--models", models,
        "--embedder-runtime", runtime, "--answer-window", str(answer_window), "--force",
    )  # fmt: skip
    run = run_measured(argv)
    if run.code != 0:
        raise RuntimeError(f"bank build failed ({run.code}):\n{run.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "wall": run.wall,
        "embed_and_arrays": float(manifest["build_seconds"]),
        "distinct_texts": float(manifest["distinct_texts"]),
        "answers": float(manifest["answers"]),
        "rows": float(manifest["rows"]),
        "texts_per_s": manifest["distinct_texts"] / run.wall,
        "peak_mib": run.peak_mib,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, list[dict[str, float]]]:
    """Run the builds and print the figures; returns every run per runtime."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtimes", default="openvino-int8", help="comma-separated runtimes")
    parser.add_argument(
        "--answer-window", type=int, default=0, help="tokens kept per answer (0: all)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="builds per runtime")
    parser.add_argument("--data", type=Path, default=ZEROEVAL, help="the data file")
    parser.add_argument("--models", default=OPEN_POOL, help="the pool (default: open-weight)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the last bank here")
    args = parser.parse_args(argv)
    header("bank build: wall time, texts per second, peak memory")
    print(f"data {args.data}, models {args.models}, answer window {args.answer_window or 'all'}")
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="jisi-bench-build-") as scratch:
        for runtime in args.runtimes.split(","):
            runs = []
            for repeat in range(args.repeats):
                out = args.keep if args.keep is not None else Path(scratch) / runtime
                before = load_line()
                figures = build_once(args.data, runtime, out, args.models, args.answer_window)
                runs.append(figures)
                print(
                    f"{runtime:>13} run {repeat + 1}: {figures['wall']:.1f} s wall "
                    f"({figures['embed_and_arrays']:.1f} s embedding and arrays), "
                    f"{figures['distinct_texts']:.0f} distinct texts of "
                    f"{figures['rows'] + figures['answers']:.0f}, "
                    f"{figures['texts_per_s']:.1f} texts/s, "
                    f"peak RSS {figures['peak_mib']:.0f} MiB; "
                    f"before: {before}; after: {load_line()}"
                )
            results[runtime] = runs
            wall = Spread.of([r["wall"] for r in runs])
            print(
                f"{runtime:>13}: wall {wall.format(1, ' s')}, texts/s "
                f"{Spread.of([r['texts_per_s'] for r in runs]).format(1)}, peak RSS "
                f"{Spread.of([r['peak_mib'] for r in runs]).format(0, ' MiB')}; target "
                f"< {TARGET_SECONDS:.0f} s: "
                + ("met" if wall.median < TARGET_SECONDS else "MISSED")
            )
    return results


if __name__ == "__main__":
    main()
