"""Load test of `jisi serve`, on loopback, bounded in requests and in time.

It builds a small bank from a slice of the shared data (in a temporary directory), starts
`jisi replay-serve` (the recorded models of the test split) and `jisi serve` over that bank, and:

1. asks each test question once, in turn, for its reference answer, and checks that the answer
   is one of the recorded answers to that very question;
2. fires a burst of `--burst` requests at once (default 200): every one must answer, with no
   error, the reference answer of its own question (no cross-talk between requests);
3. sends requests until `--total` (default 2,000) have been sent, `--concurrency` at a time,
   sampling the serve process's resident memory (RSS) throughout.

It prints requests per second, p50 / p99 latency, and the memory of the serve process (after the
warm-up, at its peak, at the end), and exits non-zero on any error, wrong answer, or when the
time limit is reached. Nothing leaves 127.0.0.1 and nothing is written outside a temporary
directory.

    .venv/bin/python benchmarks/load.py            # defaults: 200 at once, 2,000 in all
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "zeroeval_gsm8k_math.jsonl.gz"
MODELS = ("o1-mini-2024-09-12", "gpt-4o-2024-08-06", "gemma-2-2b-it")
PRICES = {"o1-mini-2024-09-12": (3.0, 12.0), "gpt-4o-2024-08-06": (2.5, 10.0)}
KEY_ENV = "JISI_LOAD_KEY"
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "LANGSMITH_TRACING": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
    KEY_ENV: "sk-load-test-not-a-real-key",
}


@dataclass
class Server:
    """A `jisi` subprocess serving on a loopback port."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        """Its OpenAI-style base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        """Stop its process group and reap it."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


@dataclass
class Phase:
    """The outcome of a batch of requests."""

    name: str
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wrong: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """One line of figures."""
        done = len(self.latencies)
        cuts = statistics.quantiles(self.latencies, n=100) if done >= 2 else [0.0] * 99
        return (
            f"{self.name}: {done} answered, {len(self.errors)} errors, {self.wrong} wrong, "
            f"{done / self.seconds:.1f} req/s, p50 {cuts[49] * 1000:.0f} ms, "
            f"p99 {cuts[98] * 1000:.0f} ms, {self.seconds:.1f} s"
        )


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def jisi(*args: str) -> list[str]:
    """argv of a `jisi` command run by this interpreter."""
    return [sys.executable, "-m", "jisi_graph", *args]


def start(name: str, args: Sequence[str], workdir: Path, deadline_s: float) -> Server:
    """Start a server and wait until `GET /v1/models` answers."""
    port = free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*args, "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **OFFLINE},
            start_new_session=True,
        )
    server = Server(process, port, log)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    raise SystemExit(f"{name} did not start:\n{log.read_text(errors='replace')}")


def test_questions(data: Path, count: int) -> dict[str, set[str]]:
    """The first `count` test questions answered by every pool model, with their answers."""
    questions: dict[str, set[str]] = {}
    with gzip.open(data, "rt", encoding="utf-8") as lines:
        for line in lines:
            row = json.loads(line)
            outputs = row.get("raw_output") or {}
            if row.get("split") != "test" or not all(outputs.get(m) for m in MODELS):
                continue
            questions.setdefault(row["query"], {outputs[m] for m in MODELS})
            if len(questions) == count:
                break
    return questions


class MemoryWatch:
    """Samples a process's RSS every `every_s` seconds in a thread."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        """Watch process `pid` (not yet started)."""
        self.process = psutil.Process(pid)
        self.every_s = every_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.process.memory_info().rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def ask(client: httpx.AsyncClient, url: str, question: str) -> tuple[str | None, str]:
    """(the answer or None, an error message or "") of one request."""
    body = {"model": "jisi", "messages": [{"role": "user", "content": question}]}
    try:
        reply = await client.post(url, json=body)
    except httpx.HTTPError as error:
        return None, f"{type(error).__name__}"
    if reply.status_code != 200:
        return None, f"HTTP {reply.status_code}: {reply.text[:200]}"
    return reply.json()["choices"][0]["message"]["content"], ""


async def run_phase(
    name: str,
    base_url: str,
    questions: Sequence[str],
    reference: dict[str, str],
    concurrency: int,
    deadline: float,
) -> Phase:
    """Ask `questions`, `concurrency` at a time; check each answer against its reference."""
    phase = Phase(name)
    gate = asyncio.Semaphore(concurrency)
    url = f"{base_url}/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, question: str) -> None:
        async with gate:
            if time.monotonic() > deadline:
                phase.errors.append("time limit reached before sending")
                return
            started = time.perf_counter()
            answer, error = await ask(client, url, question)
            if error:
                phase.errors.append(error)
                return
            phase.latencies.append(time.perf_counter() - started)
            if answer != reference[question]:
                phase.wrong += 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, q) for q in questions))
        phase.seconds = time.perf_counter() - started
    return phase


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; 0 when every request answered its own question correctly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bank-rows", type=int, default=60, help="train rows in the bank")
    parser.add_argument("--questions", type=int, default=40, help="distinct test questions")
    parser.add_argument("--burst", type=int, default=200, help="requests sent at once")
    parser.add_argument("--total", type=int, default=2000, help="requests in all")
    parser.add_argument("--concurrency", type=int, default=200, help="after the burst")
    parser.add_argument("--time-limit", type=float, default=900.0, help="seconds, in all")
    args = parser.parse_args(argv)
    if not 0 < args.burst <= args.total <= 10_000:
        parser.error("need 0 < --burst <= --total <= 10000")
    deadline = time.monotonic() + args.time_limit
    questions = test_questions(args.data, args.questions)
    with tempfile.TemporaryDirectory(prefix="jisi-load-") as tmp:
        workdir = Path(tmp)
        bank = workdir / "bank"
        subprocess.run(
            jisi(
                "bank", "build", str(args.data), "--out", str(bank),
                "--models", ",".join(MODELS), "--limit", str(args.bank_rows),
            ),
            check=True,
            env={**os.environ, **OFFLINE},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        replay_args = jisi("replay-serve", "--data", str(args.data), "--split", "test")
        replay = start("replay", replay_args, workdir, 300)
        try:
            pool = workdir / "pool.yaml"
            pool.write_text(
                f"defaults:\n  base_url: {replay.base_url}\n  api_key_env: {KEY_ENV}\nmodels:\n"
                + "".join(
                    f"  - name: {m}\n    input_price: {PRICES.get(m, (0.15, 0.6))[0]}\n"
                    f"    output_price: {PRICES.get(m, (0.15, 0.6))[1]}\n"
                    for m in MODELS
                ),
                encoding="utf-8",
            )
            serve = start(
                "serve", jisi("serve", "--bank", str(bank), "--pool", str(pool)), workdir, 300
            )
            try:
                return measure(serve, questions, args, deadline)
            finally:
                serve.stop()
        finally:
            replay.stop()


def measure(
    serve: Server, questions: dict[str, set[str]], args: argparse.Namespace, deadline: float
) -> int:
    """The three phases against a running `jisi serve`; prints the figures."""
    ordered = list(questions)
    reference: dict[str, str] = {}
    with httpx.Client(timeout=120) as client:
        for question in ordered:
            body = {"model": "jisi", "messages": [{"role": "user", "content": question}]}
            reply = client.post(f"{serve.base_url}/chat/completions", json=body)
            reply.raise_for_status()
            reference[question] = reply.json()["choices"][0]["message"]["content"]
    not_recorded = [q for q in ordered if reference[q] not in questions[q]]
    distinct = len(set(reference.values()))
    print(
        f"reference: {len(ordered)} questions, {distinct} distinct answers, "
        f"{len(not_recorded)} not among their question's recorded answers"
    )
    burst = [ordered[i % len(ordered)] for i in range(args.burst)]
    rest = [ordered[(i * 7) % len(ordered)] for i in range(args.total - args.burst)]
    with MemoryWatch(serve.process.pid) as memory:
        warm = memory.process.memory_info().rss
        first = asyncio.run(
            run_phase("burst", serve.base_url, burst, reference, args.burst, deadline)
        )
        print(first.line())
        second = asyncio.run(
            run_phase("sustained", serve.base_url, rest, reference, args.concurrency, deadline)
        )
        print(second.line())
    every = first.latencies + second.latencies
    cuts = statistics.quantiles(every, n=100)
    seconds = first.seconds + second.seconds
    samples = memory.samples
    tenth = max(1, len(samples) // 10)
    mib = 1024 * 1024
    print(
        f"all: {len(every)} of {args.total} answered in {seconds:.1f} s, "
        f"{len(every) / seconds:.1f} req/s, p50 {cuts[49] * 1000:.0f} ms, "
        f"p99 {cuts[98] * 1000:.0f} ms"
    )
    print(
        f"serve RSS: {warm / mib:.0f} MiB after warm-up, peak {max(samples) / mib:.0f} MiB, "
        f"first tenth of the run {max(samples[:tenth]) / mib:.0f} MiB max, "
        f"last tenth {max(samples[-tenth:]) / mib:.0f} MiB max, end {samples[-1] / mib:.0f} MiB"
    )
    errors = first.errors + second.errors
    for error in sorted(set(errors))[:5]:
        print(f"error: {error}")
    ok = not errors and not first.wrong and not second.wrong and not not_recorded
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
