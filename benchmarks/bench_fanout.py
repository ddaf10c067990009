"""Benchmark 3: live fan-out, the wall time of one query in rounds of a fixed reply delay d.

    .venv/bin/python benchmarks/bench_fanout.py             # d = 0.5 s, 5 queries

A loopback OpenAI-compatible server (in this process, on a free port) answers every chat call
after exactly d seconds. The graph runs over a small synthetic bank whose models all score
alike, so that JiSi aggregates, with 2 probes and 3 candidates: the probes are asked together
(round 1), the third candidate alone (round 2), then the aggregator (round 3). A query therefore
costs about 3 rounds, never the sum of its 4 calls. With the paper's defaults (3 probes, 3
candidates) there is no extra candidate: about 2 rounds. Embedding is a deterministic fake, so
that only the calls and the graph take time.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Spread, header, load_line  # noqa: E402

MODELS = ["model-a", "model-b", "model-c", "model-d"]
EXPECTED_ROUNDS = {"extra candidate": 3, "paper defaults": 2}


def delayed_app(delay: float, counter: dict[str, int]) -> Any:
    """A FastAPI app answering `POST /v1/chat/completions` after `delay` seconds."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(body: dict[str, Any]) -> dict[str, Any]:
        counter["calls"] += 1
        await asyncio.sleep(delay)
        model = str(body.get("model", "model"))
        return {
            "id": f"bench-{counter['calls']}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"An answer from {model}."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26},
        }

    return app


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def loopback_server(delay: float) -> Iterator[tuple[str, dict[str, int]]]:
    """Serve the delayed app on loopback in a thread; yields its base URL and call counter."""
    import uvicorn

    counter = {"calls": 0}
    port = free_port()
    config = uvicorn.Config(
        delayed_app(delay, counter), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the loopback server did not start within 30 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1", counter
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def fanout_graph(base_url: str) -> Any:
    """The JiSi graph over a 40-row synthetic bank of 4 equally good models, on `base_url`."""
    from langchain_core.embeddings.fake import DeterministicFakeEmbedding

    from jisi_graph.bank.build import build_bank
    from jisi_graph.bank.manifest import SourceRecord
    from jisi_graph.bank.schema import BankRow
    from jisi_graph.embedding import Embedder
    from jisi_graph.graph import build_graph
    from jisi_graph.pool import ModelSpec, Pool
    from jisi_graph.resources import Resources

    rows = [
        BankRow.model_validate(
            {
                "query": f"Question number {i} about topic {i % 5}?",
                "dataset": "bench",
                "index": i,
                "split": "train",
                "records": {name: 1.0 for name in MODELS},
                "usages": {
                    name: {"prompt_tokens": 20, "completion_tokens": 6 + j}
                    for j, name in enumerate(MODELS)
                },
                "raw_output": {name: f"An answer from {name}." for name in MODELS},
            }
        )
        for i in range(40)
    ]
    embedder = Embedder(embeddings=DeterministicFakeEmbedding(size=32), id="bench:fake")
    bank = build_bank(
        rows,
        embedder,
        source=SourceRecord(path="synthetic", sha256=None, split="train"),
        votable={"bench": False},
    )
    pool = Pool.from_models([ModelSpec(name=name, base_url=base_url) for name in MODELS])
    return build_graph(Resources(bank, embedder, pool))


def time_queries(graph: Any, knobs: dict[str, Any], queries: int) -> list[tuple[float, int, str]]:
    """Run `queries` queries; (wall seconds, calls made, switch mode) for each."""
    from jisi_graph.context import JisiContext

    context = JisiContext(**knobs)
    results = []
    for i in range(queries):
        started = time.perf_counter()
        output = graph.invoke(
            {"query": f"A new question {i} about topic {i % 5}?"}, context=context
        )
        wall = time.perf_counter() - started
        decision = output["decision"]
        calls = len(decision.get("calls") or [])
        results.append((wall, calls, str(decision.get("mode"))))
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark and print the rounds per query; returns them per configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=float, default=0.5, help="reply delay d in seconds")
    parser.add_argument("--queries", type=int, default=5, help="queries per configuration")
    args = parser.parse_args(argv)
    header("live fan-out against a loopback server with a fixed reply delay")
    print(f"d = {args.delay} s, {args.queries} queries per configuration")
    configurations = {
        "extra candidate": {"sample_n": 2, "top_k": 3, "aggregation": "llm"},
        "paper defaults": {"aggregation": "llm"},
    }
    summary: dict[str, dict[str, float]] = {}
    with loopback_server(args.delay) as (base_url, counter):
        graph = fanout_graph(base_url)
        time_queries(graph, configurations["paper defaults"], 1)  # warm-up: clients, imports
        for name, knobs in configurations.items():
            before = counter["calls"]
            runs = time_queries(graph, knobs, args.queries)
            rounds = Spread.of([wall / args.delay for wall, _, _ in runs])
            calls = (counter["calls"] - before) / args.queries
            modes = sorted({mode for _, _, mode in runs})
            summary[name] = {"rounds": rounds.median, "calls": calls}
            print(
                f"{name:>16}: {rounds.format(2)} rounds of d per query, "
                f"{calls:.1f} calls per query (sum of calls = {calls:.1f} rounds), "
                f"mode {','.join(modes)}, expected ~{EXPECTED_ROUNDS[name]}; {load_line()}"
            )
    return summary


if __name__ == "__main__":
    main()
