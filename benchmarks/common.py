"""Shared helpers of the benchmark scripts: the machine, summaries of timings, measured children.

Every figure a benchmark prints is meant to go next to the machine it was measured on and the
load average at that moment (the machine may be shared), so `machine_line` and `load_line` are
printed with every result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
ZEROEVAL = DATA / "zeroeval_gsm8k_math.jsonl.gz"
ZEROEVAL_BANK = ROOT / "banks" / "zeroeval-open"
OPEN_POOL = (
    "Llama-3.1-405B-Inst@sambanova,Meta-Llama-3.1-70B-Instruct,Qwen2-72B-Instruct,"
    "Mistral-Large-2,deepseek-v2.5-0908,Athene-70B,gemma-2-9b-it,Yi-1.5-34B-Chat,"
    "Meta-Llama-3-70B-Instruct,Phi-3.5-mini-instruct"
)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}

# Runs `argv` as the only child of a fresh interpreter and prints its wall time and peak RSS:
# RUSAGE_CHILDREN's ru_maxrss is the largest of all waited-for children, so one child each.
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[1:])
wall = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "wall": wall, "peak_kib": peak}), file=sys.stderr)
"""


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    return os.getloadavg()


def load_line() -> str:
    """The load averages as printed beside a figure."""
    one, five, fifteen = load_average()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


def memory_gib() -> float:
    """Total memory of the machine in GiB (from /proc/meminfo)."""
    with open("/proc/meminfo", encoding="ascii") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def machine_line() -> str:
    """Cores, memory and CPU model, on one line."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"machine: {os.cpu_count()} cores, {memory_gib():.1f} GiB memory, {model}"


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of durations given in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no durations to summarise")
    return float(np.percentile(np.asarray(seconds, dtype=np.float64), q) * 1000.0)


@dataclass(frozen=True)
class Spread:
    """Median, minimum and maximum of repeated measurements."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """The spread of `values` (at least one)."""
        if not values:
            raise ValueError("no values to summarise")
        array = np.asarray(values, dtype=np.float64)
        return cls(float(np.median(array)), float(array.min()), float(array.max()))

    def format(self, digits: int = 2, unit: str = "") -> str:
        """`median (min .. max) unit`."""
        return f"{self.median:.{digits}f} ({self.low:.{digits}f} .. {self.high:.{digits}f}){unit}"


@dataclass(frozen=True)
class ChildRun:
    """A measured child process: exit code, wall seconds, peak resident memory, output."""

    code: int
    wall: float
    peak_mib: float
    stdout: str
    stderr: str


def run_measured(argv: Sequence[str], *, env: dict[str, str] | None = None) -> ChildRun:
    """Run `argv` to completion; wall time and peak RSS (MiB) measured by a parent of its own."""
    child_env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv],
        capture_output=True,
        text=True,
        env=child_env,
        cwd=ROOT,
        check=False,
    )
    lines = done.stderr.rstrip().splitlines()
    if not lines:
        raise RuntimeError(f"measuring {argv[0]} printed nothing")
    figures = json.loads(lines[-1])
    return ChildRun(
        code=int(figures["code"]),
        wall=float(figures["wall"]),
        peak_mib=figures["peak_kib"] / 1024.0,
        stdout=done.stdout,
        stderr="\n".join(lines[:-1]),
    )


def jisi_argv(*args: str) -> list[str]:
    """The argv of a `jisi` command run by this interpreter."""
    return [sys.executable, "-m", "jisi_graph", *args]


def stamp() -> str:
    """The local time, for the log of a run."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def header(title: str) -> None:
    """Print a benchmark's title, the machine and the load average."""
    print(f"== {title} ({stamp()})")
    print(machine_line())
    print(load_line())
