"""Every benchmark once, in order, with its figures; the whole takes under 10 minutes.

    .venv/bin/python benchmarks/run_all.py

Needs `banks/zeroeval-open` (built by `make eval`) for the graph and eval benchmarks; the bank
build benchmark writes into a temporary directory. Each script can also be run on its own (see
its docstring for its options); docs/performance.md has the figures and how they were taken.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS: list[list[str]] = [
    ["bench_routing.py"],
    ["bench_graph.py"],
    ["bench_fanout.py"],
    ["bench_eval.py", "--repeats", "2"],
    ["bench_build.py"],
]


def main() -> int:
    """Run each script in turn; returns the number of scripts that failed."""
    started = time.perf_counter()
    failed = 0
    for script in SCRIPTS:
        began = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / script[0]), *script[1:]])
        print(f"-- {script[0]}: exit {code} after {time.perf_counter() - began:.0f} s\n")
        failed += code != 0
    print(f"all benchmarks: {time.perf_counter() - started:.0f} s, {failed} failed")
    return failed


if __name__ == "__main__":
    raise SystemExit(main())
