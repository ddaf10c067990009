"""Benchmark 2 (overhead): the graph's time per query with replay models, minus embedding.

    .venv/bin/python benchmarks/bench_graph.py              # banks/zeroeval-open, 150 queries

Runs the compiled graph, one query at a time, on the ZeroEval test rows over the 1,427-row
ZeroEval bank with the open-weight pool answering by replay (no network, no model), with the
evaluation's context (vote aggregation). Every call into the embedder is timed, so each query's
wall time splits into embedding (the query and its probes' answers) and the rest: the graph's
own overhead (LangGraph, the nodes, the routing math, the replay calls, the decision record).
Target: overhead under 15 ms per query.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import OPEN_POOL, ZEROEVAL, ZEROEVAL_BANK, header, load_line, percentile_ms  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402

TARGET_OVERHEAD_MS = 15.0


class TimedEmbeddings(Embeddings):
    """Wraps an `Embeddings` and adds the time of every call to a per-thread total."""

    def __init__(self, inner: Embeddings) -> None:
        self.inner = inner
        self._local = threading.local()

    @property
    def seconds(self) -> float:
        """Seconds spent embedding in this thread since the last `reset`."""
        return float(getattr(self._local, "seconds", 0.0))

    def reset(self) -> None:
        """Start this thread's total afresh."""
        self._local.seconds = 0.0

    def _timed(self, call: object, argument: object) -> object:
        started = time.perf_counter()
        try:
            return call(argument)  # type: ignore[operator]
        finally:
            self._local.seconds = self.seconds + time.perf_counter() - started

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts, timed."""
        return self._timed(self.inner.embed_documents, texts)  # type: ignore[return-value]

    def embed_query(self, text: str) -> list[float]:
        """Embed one text, timed."""
        return self._timed(self.inner.embed_query, text)  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the benchmark and print the figures; returns them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bank", type=Path, default=ZEROEVAL_BANK, help="a built bank")
    parser.add_argument(
        "--data", type=Path, default=ZEROEVAL, help="rows whose test split is asked"
    )
    parser.add_argument("--pool", default=OPEN_POOL, help="the pool (default: open-weight)")
    parser.add_argument("--queries", type=int, default=150, help="queries timed")
    parser.add_argument("--runtime", default=None, help="embedder runtime (default: default)")
    args = parser.parse_args(argv)
    if not (args.bank / "manifest.json").is_file():
        raise SystemExit(f"no bank at {args.bank}: build it first (make eval, or jisi bank build)")

    from jisi_graph.bank.loaders import load_rows
    from jisi_graph.bank.store import Bank
    from jisi_graph.embedding import Embedder
    from jisi_graph.evaluate import eval_context
    from jisi_graph.graph import build_graph
    from jisi_graph.replay import replay_pool
    from jisi_graph.resources import Resources, load_bank_embedder

    header("graph overhead per query (replay models), embedding excluded")
    bank = Bank.load(args.bank)
    rows = load_rows(args.data, split="test", limit=args.queries + 5)
    inner = load_bank_embedder(bank, runtime=args.runtime)
    timed = TimedEmbeddings(inner.embeddings)
    embedder = Embedder(
        embeddings=timed, id=inner.id, window=inner.window, _dim=inner.dim, runtime=inner.runtime
    )
    graph = build_graph(Resources(bank, embedder, replay_pool(rows, args.pool.split(","))))
    context = eval_context()
    print(
        f"bank {args.bank} ({bank.size} rows, {len(bank.models)} models), "
        f"{args.queries} queries, embedder runtime {embedder.runtime}"
    )
    for row in rows[:5]:  # warm-up: first calls compile and allocate
        graph.invoke({"query": row.query}, context=context)
    totals: list[float] = []
    embedding: list[float] = []
    overheads: list[float] = []
    for row in rows[5 : 5 + args.queries]:
        timed.reset()
        started = time.perf_counter()
        graph.invoke({"query": row.query}, context=context)
        total = time.perf_counter() - started
        totals.append(total)
        embedding.append(timed.seconds)
        overheads.append(total - timed.seconds)
    result = {
        "queries": float(len(totals)),
        "total_p50_ms": percentile_ms(totals, 50),
        "embedding_p50_ms": percentile_ms(embedding, 50),
        "overhead_p50_ms": percentile_ms(overheads, 50),
        "overhead_p99_ms": percentile_ms(overheads, 99),
        "overhead_mean_ms": 1000.0 * sum(overheads) / len(overheads),
        "queries_per_s": len(totals) / sum(totals),
    }
    print(
        f"per query: total p50 {result['total_p50_ms']:.1f} ms, embedding p50 "
        f"{result['embedding_p50_ms']:.1f} ms, overhead p50 {result['overhead_p50_ms']:.2f} ms "
        f"(p99 {result['overhead_p99_ms']:.2f}, mean {result['overhead_mean_ms']:.2f}); "
        f"{result['queries_per_s']:.1f} queries/s one at a time; {load_line()}"
    )
    met = result["overhead_p50_ms"] < TARGET_OVERHEAD_MS
    print(f"target overhead < {TARGET_OVERHEAD_MS:g} ms: " + ("met" if met else "MISSED"))
    return result


if __name__ == "__main__":
    main()
