"""Benchmark 1: the time of one routing decision against a bare FAISS flat search of the bank.

    .venv/bin/python benchmarks/bench_routing.py            # 1k, 10k and 100k rows, 10 models

Synthetic banks of clustered unit vectors (so that support sets have realistic sizes), 10
models, random scores, answer embeddings and completion lengths. One routing decision is what the
`retrieve`, `score_aggregators` and `route` nodes compute once the query and the probes' answers
are embedded: the neighbours and the support set, P, the aggregator order, the probes, response
and length similarity, the mixed similarity, the filtered set, R, the candidates and the switch
count. It is timed against `index.search(query, k)` on the same index, in the same run, and the
ratio of the medians is printed. Targets at 10k rows: ratio at most 3, p50 under 2 ms.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import header, load_line, percentile_ms  # noqa: E402

from jisi_graph.bank.manifest import BankManifest, EmbedderRecord, SourceRecord  # noqa: E402
from jisi_graph.bank.store import Bank  # noqa: E402
from jisi_graph.context import DEFAULTS  # noqa: E402
from jisi_graph.routing import (  # noqa: E402
    aggregator_scores,
    choose_probes,
    filtered_set,
    length_similarity,
    mixed_similarity,
    rank_models,
    response_similarity,
    support_set,
    switch_count,
    weighted_model_scores,
)

DIM = 384
MODELS = 10
ROWS_PER_CLUSTER = 100
NOISE = 0.8  # norm of the noise added to a unit cluster centre: same-cluster cosine about 0.6
TARGET_RATIO = 3.0
TARGET_P50_MS = 2.0


def clustered_vectors(
    rng: np.random.Generator, centres: np.ndarray, count: int, noise: float = NOISE
) -> np.ndarray:
    """`count` unit vectors, each a random centre plus Gaussian noise of norm about `noise`."""
    picks = rng.integers(0, len(centres), size=count)
    scale = noise / np.sqrt(centres.shape[1])
    vectors = centres[picks] + rng.standard_normal((count, centres.shape[1]), dtype=np.float32) * (
        scale
    )
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def synthetic_bank(
    rows: int, models: int = MODELS, dim: int = DIM, seed: int = 0
) -> tuple[Bank, np.ndarray]:
    """A bank of `rows` clustered query vectors with random scores, answers and lengths.

    Returns the bank and its cluster centres (unit vectors), to draw queries near it.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, rows // ROWS_PER_CLUSTER), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    queries = clustered_vectors(rng, centres, rows)
    index = faiss.IndexFlatIP(dim)
    index.add(queries)
    answers = np.empty((rows, models, dim), dtype=np.float16)
    for start in range(0, rows, 4096):
        part = rng.standard_normal((min(4096, rows - start), models, dim), dtype=np.float32)
        answers[start : start + len(part)] = part / np.sqrt(dim)
    names = [f"model-{i}" for i in range(models)]
    manifest = BankManifest(
        embedder=EmbedderRecord(id="synthetic", dim=dim, window=None),
        models=names,
        datasets=["synthetic"],
        rows=rows,
        answers=rows * models,
        distinct_texts=rows * (models + 1),
        source=SourceRecord(path="synthetic", sha256=None, split="train"),
        built_at="",
        build_seconds=0.0,
        votable={"synthetic": False},
    )
    shape = (rows, models)
    return Bank(
        manifest=manifest,
        index=index,
        ids=[str(i) for i in range(rows)],
        queries=[""] * rows,
        scores=(rng.random(shape) < 0.6).astype(np.float32),
        completion_tokens=rng.integers(20, 800, size=shape).astype(np.float32),
        prompt_tokens=rng.integers(50, 300, size=shape).astype(np.float32),
        costs=rng.random(shape) * 1e-3,
        answered=np.ones(shape, dtype=bool),
        answer_embeddings=answers,
        dataset_ids=np.zeros(rows, dtype=np.int32),
    ), centres


@dataclass(frozen=True)
class Decision:
    """What a routing decision produced (kept so that nothing is optimised away)."""

    support_size: int
    probes: list[int]
    candidates: list[int]
    n: int
    aggregator: int


def routing_decision(
    bank: Bank,
    comprehensive: np.ndarray,
    query: np.ndarray,
    probe_vectors: np.ndarray,
    probe_lengths: np.ndarray,
) -> Decision:
    """One routing decision with the default knobs, as the graph's nodes compute it."""
    d = DEFAULTS
    active = np.ones(len(bank.models), dtype=bool)
    found = bank.neighbours(query, d.support_k, d.rag_thres)
    chosen = support_set(found.similarities, d.support_k, d.rag_thres)
    rows, sims = found.indices[chosen], found.similarities[chosen]
    support_scores = weighted_model_scores(sims, bank.scores[rows])
    weighted_model_scores(sims, bank.costs[rows])  # expected costs, as `retrieve` computes them
    order = rank_models(aggregator_scores(comprehensive, support_scores, d.aggregator_beta), active)
    probes = choose_probes(support_scores, comprehensive, active, d.sample_n)
    columns = probes.tolist()
    past = bank.answer_embeddings[rows][:, columns, :].astype(np.float32)
    present = bank.answered[rows][:, columns]
    response = response_similarity(probe_vectors[: len(columns)], past, present)
    past_lengths = bank.completion_tokens[rows][:, columns]
    length = length_similarity(probe_lengths[: len(columns)], past_lengths, d.length_order)
    mixed = mixed_similarity(sims.astype(np.float64), response, length, d.length_coef, d.query_coef)
    kept = filtered_set(mixed, d.subset_p)
    quality = weighted_model_scores(mixed[kept], bank.scores[rows[kept]])
    candidates = rank_models(quality, active)[: d.top_k]
    n = switch_count(quality[candidates], d.switch_threshold)
    return Decision(len(rows), columns, candidates.tolist(), n, int(order[0]))


def bench_size(rows: int, queries: int, seed: int = 0) -> dict[str, float]:
    """Time `queries` routing decisions and bare searches on a synthetic bank of `rows` rows."""
    bank, centres = synthetic_bank(rows, seed=seed)
    rng = np.random.default_rng(seed + 1)
    comprehensive = bank.comprehensive_ability()
    asked = clustered_vectors(rng, centres, queries)
    probe_vectors = rng.standard_normal((queries, DEFAULTS.sample_n, DIM)).astype(np.float32)
    probe_vectors /= np.linalg.norm(probe_vectors, axis=2, keepdims=True)
    probe_lengths = rng.integers(20, 800, size=(queries, DEFAULTS.sample_n)).astype(np.float64)
    k = DEFAULTS.support_k
    for i in range(min(5, queries)):  # warm-up
        bank.index.search(asked[i : i + 1], k)
        routing_decision(bank, comprehensive, asked[i], probe_vectors[i], probe_lengths[i])
    search_times: list[float] = []
    decision_times: list[float] = []
    support_sizes: list[int] = []
    for i in range(queries):  # interleaved, so that both see the same machine
        started = time.perf_counter()
        bank.index.search(asked[i : i + 1], k)
        search_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        decision = routing_decision(
            bank, comprehensive, asked[i], probe_vectors[i], probe_lengths[i]
        )
        decision_times.append(time.perf_counter() - started)
        support_sizes.append(decision.support_size)
    search_p50 = percentile_ms(search_times, 50)
    decision_p50 = percentile_ms(decision_times, 50)
    return {
        "rows": rows,
        "queries": queries,
        "support_median": float(np.median(support_sizes)),
        "search_p50_ms": search_p50,
        "search_p99_ms": percentile_ms(search_times, 99),
        "decision_p50_ms": decision_p50,
        "decision_p99_ms": percentile_ms(decision_times, 99),
        "ratio_p50": decision_p50 / search_p50,
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Run the benchmark and print a table; returns one result per bank size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="bank rows, comma-separated")
    parser.add_argument("--queries", type=int, default=300, help="queries timed per size")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (default 1)")
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    header("routing overhead vs bare FAISS flat search")
    print(f"{MODELS} models, dim {DIM}, {args.queries} queries per size, {args.threads} thread(s)")
    print(
        f"{'rows':>8} {'|S| med':>8} {'search p50':>11} {'p99':>8} "
        f"{'decision p50':>13} {'p99':>8} {'ratio':>6}  load"
    )
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        result = bench_size(size, args.queries)
        results.append(result)
        print(
            f"{size:>8} {result['support_median']:>8.0f} {result['search_p50_ms']:>9.3f}ms "
            f"{result['search_p99_ms']:>6.3f}ms {result['decision_p50_ms']:>11.3f}ms "
            f"{result['decision_p99_ms']:>6.3f}ms {result['ratio_p50']:>6.2f}  {load_line()}"
        )
    for result in results:
        if result["rows"] == 10_000:
            met = result["ratio_p50"] <= TARGET_RATIO and result["decision_p50_ms"] < TARGET_P50_MS
            print(
                f"target at 10k rows (ratio <= {TARGET_RATIO:g}, p50 < {TARGET_P50_MS:g} ms): "
                + ("met" if met else "MISSED")
            )
    return results


if __name__ == "__main__":
    main()
