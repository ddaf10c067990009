"""`jisi calibrate`: choose the knobs that matter by K-fold cross-validation over the bank's rows.

For each fold, the held-out bank rows play the queries and the other rows the bank. Everything a
run needs is already in the bank: the query embeddings (support sets), the answer embeddings and
completion tokens of every model (the probes' answers and their response and length
similarity), the recorded scores (grading) and costs. So the graph's decision is replayed here
as numpy over the bank's arrays, with no embedding and no model call, for every point of a knob
grid. Aggregation is by vote, graded by the recorded score of the winning candidate, only where
the query's support set is votable per the manifest; elsewhere the run routes (as `jisi eval`).

Knobs chosen (`CALIBRATED_KNOBS`): `query_coef`, `switch_threshold`, `probe_margin`, `top_k`,
`candidate_source`, `cost_weight`, `sample_n`, `stop_on_agreement`, and `support_k` for pure
support-set routing. Every other knob stays at its default.

Objective: the highest CV macro accuracy whose CV cost per query is within the cap (the target
budget, else the best single model's own cost), and which is at least as accurate as the best
single model chosen on the bank and as query-kNN routing; ties go to the cheaper point, then to
the one nearer the paper's configuration. With a target accuracy: the cheapest point reaching
it. When no point meets the accuracy floor, the most accurate point within the cap is taken
instead and the calibration says so.

Approximations (documented in the file's notes): a model with no answer to a held-out row counts
as a failed call (no cost; the next model takes its place, without the graph's round limit),
and the cut on aggregated length counts completion tokens instead of the answer's cl100k tokens.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from jisi_graph.bank.loaders import load_rows
from jisi_graph.bank.store import Bank
from jisi_graph.calibration import (
    CALIBRATED_KNOBS,
    Calibration,
    manifest_checksum,
    write_calibration,
)
from jisi_graph.context import DEFAULTS, JisiContext
from jisi_graph.routing import (
    choose_probes,
    cost_aware_scores,
    cut_to_length,
    filtered_set,
    length_similarity,
    mixed_similarity,
    rank_models,
    response_similarity,
    support_set,
    weighted_model_scores,
)
from jisi_graph.voting import extract_answer, query_is_votable, vote

QUERY_COEFS = (0.0, 0.25, 0.5, 0.75, 1.0)
SWITCH_THRESHOLDS = (0.05, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PROBE_MARGINS: tuple[float | None, ...] = (None, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4)
TOP_KS = (1, 2, 3, 4, 5)
SOURCES = ("mixed", "support")
COST_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
PROBING = ((False, 3), (True, 2), (True, 3))
"""(stop_on_agreement, sample_n) pairs tried: the paper's three probes, or two or three probes
that settle the query when they agree."""
SUPPORT_KS = (50, 100, 200, 400, 0)
"""Support-set sizes tried for pure support-set routing (probe margin 0); 0 stands for the whole
bank, where routing tends to the best single model on the bank."""
_TOL = 1e-9


class CalibrateError(ValueError):
    """Calibration cannot run as asked: a bad target, a pool the bank lacks, missing answers."""


@dataclass(frozen=True)
class Knobs:
    """One grid point: the calibrated knobs."""

    query_coef: float
    switch_threshold: float
    probe_margin: float | None
    top_k: int
    candidate_source: str
    cost_weight: float
    support_k: int = DEFAULTS.support_k
    sample_n: int = DEFAULTS.sample_n
    stop_on_agreement: bool = DEFAULTS.stop_on_agreement

    def as_dict(self) -> dict[str, Any]:
        """The knobs by JisiContext field name."""
        return {name: getattr(self, name) for name in CALIBRATED_KNOBS}

    def distance_to_paper(self) -> int:
        """How many knobs differ from the paper's configuration (a tie-break)."""
        return sum(getattr(self, name) != getattr(DEFAULTS, name) for name in CALIBRATED_KNOBS)


PAPER_KNOBS = Knobs(
    query_coef=DEFAULTS.query_coef,
    switch_threshold=DEFAULTS.switch_threshold,
    probe_margin=DEFAULTS.probe_margin,
    top_k=DEFAULTS.top_k,
    candidate_source=DEFAULTS.candidate_source,
    cost_weight=DEFAULTS.cost_weight,
    support_k=DEFAULTS.support_k,
    sample_n=DEFAULTS.sample_n,
    stop_on_agreement=DEFAULTS.stop_on_agreement,
)


@dataclass
class BankArrays:
    """The pool's columns of a bank, as plain arrays; queries are rows of the same arrays."""

    models: list[str]
    query_embeddings: np.ndarray
    answer_embeddings: np.ndarray
    answered: np.ndarray
    scores: np.ndarray
    costs: np.ndarray
    tokens: np.ndarray
    dataset_ids: np.ndarray
    datasets: list[str]
    votable: dict[str, bool]
    extracted: list[list[str | None]]

    @property
    def size(self) -> int:
        """Number of rows."""
        return len(self.dataset_ids)


@dataclass
class Point:
    """The CV figures of one grid point."""

    knobs: Knobs
    accuracy: float
    cost: float
    direct_fraction: float
    mean_calls: float

    def as_dict(self) -> dict[str, Any]:
        """JSON form: knobs, macro accuracy, mean cost per query (USD), fractions."""
        return {
            **self.knobs.as_dict(),
            "accuracy_macro": round(self.accuracy, 6),
            "cost_per_query": round(self.cost, 9),
            "direct_fraction": round(self.direct_fraction, 4),
            "mean_calls": round(self.mean_calls, 3),
        }


def bank_arrays(
    bank: Bank, pool: Sequence[str] | None = None, data: str | Path | None = None
) -> BankArrays:
    """The bank's arrays for the pool's columns, with each answer's extracted final answer.

    The bank stores answer embeddings but not answer texts; the texts of the votable datasets
    are read from `data` (default: the file the bank was built from, per its manifest) and
    checked row by row against the bank's queries.
    """
    names = list(bank.models) if pool is None else list(dict.fromkeys(pool))
    unknown = [name for name in names if name not in bank.models]
    if unknown:
        raise CalibrateError(f"pool models not in the bank: {', '.join(unknown)}")
    if len(names) < 2:
        raise CalibrateError("calibration needs a pool of at least two models")
    columns = [bank.model_index(name) for name in names]
    votable = dict(bank.manifest.votable)
    extracted: list[list[str | None]] = [[None] * len(names) for _ in range(bank.size)]
    wanted = {i for i, name in enumerate(bank.datasets) if votable.get(name, False)}
    if wanted:
        source = data or bank.manifest.source.path
        try:
            rows = load_rows(
                source,
                split=bank.manifest.source.split,
                limit=bank.manifest.source.limit,
            )
        except FileNotFoundError:
            raise CalibrateError(
                f"the answers to vote on are read from the bank's source file {source}, which "
                "is not there; pass --data with the file the bank was built from"
            ) from None
        if len(rows) != bank.size or any(
            row.query != query for row, query in zip(rows, bank.queries, strict=False)
        ):
            raise CalibrateError(
                f"{source} does not hold the bank's rows in the bank's order; pass --data with "
                "the file the bank was built from"
            )
        for j, row in enumerate(rows):
            if int(bank.dataset_ids[j]) not in wanted:
                continue
            extracted[j] = [
                extract_answer(row.raw_output[name]) if name in row.raw_output else None
                for name in names
            ]
    return BankArrays(
        models=names,
        query_embeddings=np.asarray(bank.query_embeddings, dtype=np.float32).copy(),
        answer_embeddings=np.asarray(bank.answer_embeddings[:, columns, :], dtype=np.float32),
        answered=np.asarray(bank.answered[:, columns], dtype=bool),
        scores=np.asarray(bank.scores[:, columns], dtype=np.float64),
        costs=np.asarray(bank.costs[:, columns], dtype=np.float64),
        tokens=np.asarray(bank.completion_tokens[:, columns], dtype=np.float64),
        dataset_ids=np.asarray(bank.dataset_ids, dtype=np.int64),
        datasets=list(bank.datasets),
        votable=votable,
        extracted=extracted,
    )


def fold_of_rows(n: int, folds: int, seed: int = 42) -> np.ndarray:
    """Each row's fold (0 .. folds-1): a seeded shuffle cut into near-equal parts."""
    if folds < 2:
        raise CalibrateError(f"--folds must be at least 2, got {folds}")
    if n < folds:
        raise CalibrateError(f"{n} bank rows cannot be cut into {folds} folds")
    order = np.random.default_rng(seed).permutation(n)
    fold = np.empty(n, dtype=np.int64)
    fold[order] = np.arange(n) % folds
    return fold


@dataclass
class Tables:
    """Per held-out row, what one ranking (cost weight, source, query weight) leads to.

    `rel[q, i]` is the i-th candidate's score relative to the best (NaN past the last one),
    `vote_score[q, n]` the grade of a vote over the top n (n = 1: the top candidate's own),
    `cut_n[q, n]` the n left after the length cut, `cost_k[q, k]` the cost of asking the probes
    and the top k candidates.
    """

    rel: np.ndarray
    positive: np.ndarray
    vote_score: np.ndarray
    cut_n: np.ndarray
    cost_k: np.ndarray
    calls_k: np.ndarray
    agreed: np.ndarray
    agreed_score: np.ndarray
    agreed_cost: np.ndarray
    agreed_calls: np.ndarray


@dataclass
class Direct:
    """Per held-out row, for one cost weight: the leader's lead, and routing to it alone."""

    lead: np.ndarray
    score: np.ndarray
    cost: np.ndarray


@dataclass
class Prepared:
    """Per held-out row: its support set and everything that depends only on it."""

    rows: list[np.ndarray]
    sims: list[np.ndarray]
    support_scores: np.ndarray
    expected_costs: np.ndarray
    ability: np.ndarray
    votable: np.ndarray


def prepare(arrays: BankArrays, fold: np.ndarray, context: JisiContext = DEFAULTS) -> Prepared:
    """Support sets of every row against the other folds' rows, P, expected costs, votability."""
    n, m = arrays.size, len(arrays.models)
    rows: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
    sims: list[np.ndarray] = [np.zeros(0)] * n
    support_scores = np.full((n, m), np.nan)
    expected = np.full((n, m), np.nan)
    ability = np.full((n, m), np.nan)
    votable = np.zeros(n, dtype=bool)
    for f in np.unique(fold):
        held = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f)
        g = weighted_model_scores(np.ones(len(train)), arrays.scores[train])
        similarity = arrays.query_embeddings[held] @ arrays.query_embeddings[train].T
        for i, q in enumerate(held):
            chosen = support_set(similarity[i], context.support_k, context.rag_thres)
            s_rows = train[chosen]
            s_sims = similarity[i][chosen].astype(np.float64)
            rows[q], sims[q] = s_rows, s_sims
            support_scores[q] = weighted_model_scores(s_sims, arrays.scores[s_rows])
            expected[q] = weighted_model_scores(s_sims, arrays.costs[s_rows])
            ability[q] = g
            votable[q] = query_is_votable(
                [arrays.datasets[d] for d in arrays.dataset_ids[s_rows]],
                arrays.votable,
                context.vote_majority,
            )
    return Prepared(rows, sims, support_scores, expected, ability, votable)


def _row_cost(arrays: BankArrays, q: int, models: Sequence[int]) -> float:
    """Recorded cost of asking these models row q (a model with no answer costs nothing)."""
    return float(
        sum(
            arrays.costs[q, m]
            for m in set(models)
            if arrays.answered[q, m] and not np.isnan(arrays.costs[q, m])
        )
    )


def _routing_quality(
    arrays: BankArrays,
    prep: Prepared,
    q: int,
    probes: Sequence[int],
    query_coefs: Sequence[float],
    context: JisiContext,
) -> list[np.ndarray]:
    """R of row q from its answered probes (METHOD.md 3), before any cost term, per query weight."""
    rows, sq = prep.rows[q], prep.sims[q]
    live = [p for p in probes if arrays.answered[q, p]]
    if not live:
        kept = filtered_set(sq, context.subset_p)
        quality = weighted_model_scores(sq[kept], arrays.scores[rows[kept]])
        return [quality for _ in query_coefs]
    sr = response_similarity(
        arrays.answer_embeddings[q, live],
        arrays.answer_embeddings[rows][:, live, :],
        arrays.answered[rows][:, live],
    )
    sl = length_similarity(
        arrays.tokens[q, live], arrays.tokens[rows][:, live], context.length_order
    )
    qualities = []
    for query_coef in query_coefs:
        mixed = mixed_similarity(sq, sr, sl, context.length_coef, query_coef)
        kept = filtered_set(mixed, context.subset_p)
        qualities.append(weighted_model_scores(mixed[kept], arrays.scores[rows[kept]]))
    return qualities


def _empty_tables(n: int, k_max: int) -> Tables:
    return Tables(
        rel=np.full((n, k_max), np.nan),
        positive=np.zeros(n, dtype=bool),
        vote_score=np.zeros((n, k_max + 1)),
        cut_n=np.tile(np.arange(k_max + 1), (n, 1)),
        cost_k=np.zeros((n, k_max + 1)),
        calls_k=np.zeros((n, k_max + 1)),
        agreed=np.zeros(n, dtype=bool),
        agreed_score=np.zeros(n),
        agreed_cost=np.zeros(n),
        agreed_calls=np.zeros(n),
    )


def _fill_row(
    arrays: BankArrays,
    table: Tables,
    q: int,
    scores: np.ndarray,
    probes: Sequence[int],
    votable: bool,
    context: JisiContext,
    stop_on_agreement: bool = False,
) -> None:
    """One held-out row of a table: candidates by `scores`, the votes, cuts and costs.

    With `stop_on_agreement`, a votable row whose answered probes (two or more) all give the
    same final answer stops there: the top probe by `scores` answers, for the probes' cost.
    """
    k_max = table.rel.shape[1]
    if stop_on_agreement and votable:
        live = [p for p in probes if arrays.answered[q, p]]
        answers = {arrays.extracted[q][p] for p in live}
        ranked = rank_models(scores, np.isin(np.arange(len(scores)), live))
        if len(live) >= 2 and len(answers) == 1 and None not in answers and len(ranked):
            table.agreed[q] = True
            table.agreed_score[q] = arrays.scores[q, int(ranked[0])]
            table.agreed_cost[q] = _row_cost(arrays, q, probes)
            table.agreed_calls[q] = len(probes)
    order = rank_models(scores, arrays.answered[q]).tolist()[:k_max]
    if not order:
        return
    best = scores[order[0]]
    table.positive[q] = best > 0
    table.rel[q, : len(order)] = scores[order] / best if best > 0 else 0.0
    tokens = [0 if np.isnan(t) else int(t) for t in arrays.tokens[q, order]]
    table.vote_score[q, 1:] = arrays.scores[q, order[0]]
    for size in range(1, k_max + 1):
        members = order[:size]
        table.cost_k[q, size] = _row_cost(arrays, q, [*probes, *members])
        table.calls_k[q, size] = len(set(probes) | set(members))
        count = min(size, len(order))
        table.cut_n[q, size] = cut_to_length(count, tokens[:count], context.cut_length)
        if votable and 2 <= size <= len(order):
            winner = vote(
                [arrays.extracted[q][i] for i in members], [float(scores[i]) for i in members]
            )
            pick = order[0] if winner is None else members[winner]
            table.vote_score[q, size] = arrays.scores[q, pick]


def build_tables(
    arrays: BankArrays,
    prep: Prepared,
    cost_weight: float,
    source: str,
    query_coefs: Sequence[float],
    k_max: int,
    context: JisiContext = DEFAULTS,
) -> dict[float, Tables]:
    """Replay every held-out row for the rankings of one cost weight and candidate source.

    Returns one table per query weight (a single one, under the default, for `support`); the
    switch threshold, K and the probe margin are applied later, by `outcome`. The context's
    `sample_n` and `stop_on_agreement` shape the probes.
    """
    stop = context.stop_on_agreement
    n, m = arrays.size, len(arrays.models)
    everyone = np.ones(m, dtype=bool)
    coefs = list(query_coefs) if source == "mixed" else [DEFAULTS.query_coef]
    tables = {qc: _empty_tables(n, k_max) for qc in coefs}
    for q in range(n):
        ranking = cost_aware_scores(
            prep.support_scores[q], prep.expected_costs[q], cost_weight, everyone
        )
        if source == "support":
            probes = (
                choose_probes(ranking, prep.ability[q], everyone, context.sample_n).tolist()
                if stop
                else []
            )
            table = tables[coefs[0]]
            _fill_row(arrays, table, q, ranking, probes, prep.votable[q], context, stop)
            continue
        probes = choose_probes(ranking, prep.ability[q], everyone, context.sample_n).tolist()
        qualities = _routing_quality(arrays, prep, q, probes, coefs, context)
        for qc, quality in zip(coefs, qualities, strict=True):
            scores = cost_aware_scores(quality, prep.expected_costs[q], cost_weight, everyone)
            _fill_row(arrays, tables[qc], q, scores, probes, prep.votable[q], context, stop)
    return tables


def build_direct(arrays: BankArrays, prep: Prepared, cost_weight: float) -> Direct:
    """Routing each row to its top model by (cost-aware) P alone, and that model's lead."""
    n, m = arrays.size, len(arrays.models)
    everyone = np.ones(m, dtype=bool)
    lead = np.full(n, -np.inf)
    score = np.zeros(n)
    cost = np.zeros(n)
    for q in range(n):
        ranking = cost_aware_scores(
            prep.support_scores[q], prep.expected_costs[q], cost_weight, everyone
        )
        ranked = rank_models(ranking, everyone)
        if len(ranked) == 1:
            lead[q] = np.inf
        elif len(ranked) > 1:
            lead[q] = ranking[ranked[0]] - ranking[ranked[1]]
        answered = rank_models(ranking, arrays.answered[q])
        if len(answered):
            pick = int(answered[0])
            score[q] = arrays.scores[q, pick]
            cost[q] = _row_cost(arrays, q, [pick])
    return Direct(lead, score, cost)


def macro(scores: np.ndarray, dataset_ids: np.ndarray) -> float:
    """Mean over datasets of the mean score per dataset."""
    present = np.unique(dataset_ids)
    return float(np.mean([scores[dataset_ids == d].mean() for d in present]))


def outcome(
    tables: Tables,
    direct: Direct,
    votable: np.ndarray,
    top_k: int,
    threshold: float,
    margin: float | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row (score, cost, calls, routed directly) of one grid point, from its tables."""
    n = tables.rel.shape[0]
    rows = np.arange(n)
    with np.errstate(invalid="ignore"):
        clearing = np.sum(tables.rel[:, :top_k] >= threshold - _TOL, axis=1)
    count = np.where(tables.positive, clearing, np.minimum(1, np.sum(~np.isnan(tables.rel), 1)))
    count = np.minimum(count, top_k)
    count = tables.cut_n[rows, count]
    use_vote = votable & (count >= 2)
    score = np.where(
        use_vote, tables.vote_score[rows, np.maximum(count, 1)], tables.vote_score[:, 1]
    )
    cost = tables.cost_k[:, top_k].copy()
    calls = tables.calls_k[:, top_k].copy()
    score = np.where(tables.agreed, tables.agreed_score, score)
    cost = np.where(tables.agreed, tables.agreed_cost, cost)
    calls = np.where(tables.agreed, tables.agreed_calls, calls)
    chosen_direct = np.zeros(n, dtype=bool)
    if margin is not None:
        chosen_direct = direct.lead >= margin - _TOL
        score = np.where(chosen_direct, direct.score, score)
        cost = np.where(chosen_direct, direct.cost, cost)
        calls = np.where(chosen_direct, 1.0, calls)
    return score, cost, calls, chosen_direct


def grid_points(cost_weights: Sequence[float], bank_rows: int) -> list[Knobs]:
    """Every grid point, without duplicates that cannot differ (e.g. a threshold with K = 1).

    The support-set size varies only for pure support-set routing (probe margin 0), the simple
    configurations, up to the whole bank (`bank_rows`); elsewhere it stays at its default.
    """
    points: list[Knobs] = []
    seen: set[Knobs] = set()
    for w, source, qc, k, t, margin, (stop, probes) in itertools.product(
        cost_weights, SOURCES, QUERY_COEFS, TOP_KS, SWITCH_THRESHOLDS, PROBE_MARGINS, PROBING
    ):
        if source == "support":
            qc = DEFAULTS.query_coef
        if k == 1:
            t = DEFAULTS.switch_threshold
        if margin == 0.0:
            qc, k, t = DEFAULTS.query_coef, DEFAULTS.top_k, DEFAULTS.switch_threshold
            source = DEFAULTS.candidate_source
            stop, probes = DEFAULTS.stop_on_agreement, DEFAULTS.sample_n
        point = Knobs(qc, t, margin, k, source, w, DEFAULTS.support_k, probes, stop)
        if point not in seen:
            seen.add(point)
            points.append(point)
    for w in cost_weights:
        for size in SUPPORT_KS:
            size = size or bank_rows
            if size == DEFAULTS.support_k or size > bank_rows:
                continue
            point = Knobs(
                DEFAULTS.query_coef,
                DEFAULTS.switch_threshold,
                0.0,
                DEFAULTS.top_k,
                DEFAULTS.candidate_source,
                w,
                size,
            )
            if point not in seen:
                seen.add(point)
                points.append(point)
    return points


def evaluate_grid(
    arrays: BankArrays,
    prep: Prepared,
    fold: np.ndarray,
    points: Sequence[Knobs],
    context: JisiContext = DEFAULTS,
    progress: bool = False,
) -> list[Point]:
    """CV macro accuracy and mean cost per query of every grid point.

    `prep` holds the support sets at the default size; other sizes are prepared here.
    """
    from tqdm.auto import tqdm

    k_max = max(p.top_k for p in points)
    tables: dict[tuple[float, str, float, bool, int], Tables] = {}
    directs: dict[tuple[float, int], Direct] = {}
    rankings = sorted(
        {
            (p.cost_weight, p.candidate_source, p.stop_on_agreement, p.sample_n)
            for p in points
            if p.probe_margin != 0.0
        }
    )
    for w, source, stop, probes in tqdm(
        rankings, desc="jisi calibrate", unit="ranking", disable=not progress
    ):
        coefs = sorted({p.query_coef for p in points if p.candidate_source == source})
        variant = context.model_copy(update={"stop_on_agreement": stop, "sample_n": probes})
        for qc, table in build_tables(arrays, prep, w, source, coefs, k_max, variant).items():
            tables[(w, source, qc, stop, probes)] = table
    preps = {DEFAULTS.support_k: prep}
    for w, size in sorted({(p.cost_weight, p.support_k) for p in points}):
        if size not in preps:
            preps[size] = prepare(arrays, fold, context.model_copy(update={"support_k": size}))
        directs[(w, size)] = build_direct(arrays, preps[size], w)
    results = []
    for point in points:
        direct = directs[(point.cost_weight, point.support_k)]
        if point.probe_margin == 0.0:
            score, cost, direct_rows = direct.score, direct.cost, np.ones(arrays.size, dtype=bool)
            calls = np.ones(arrays.size)
        else:
            table = tables[
                (
                    point.cost_weight,
                    point.candidate_source,
                    point.query_coef,
                    point.stop_on_agreement,
                    point.sample_n,
                )
            ]
            score, cost, calls, direct_rows = outcome(
                table, direct, prep.votable, point.top_k, point.switch_threshold, point.probe_margin
            )
        results.append(
            Point(
                knobs=point,
                accuracy=macro(score, arrays.dataset_ids),
                cost=float(cost.mean()),
                direct_fraction=float(direct_rows.mean()),
                mean_calls=float(calls.mean()),
            )
        )
    return results


def baselines(arrays: BankArrays, prep: Prepared, fold: np.ndarray) -> dict[str, dict[str, Any]]:
    """CV figures of the single models, the best single model on the bank, and query-kNN."""
    n = arrays.size
    scores = np.where(arrays.answered, np.nan_to_num(arrays.scores), 0.0)
    costs = np.where(arrays.answered, np.nan_to_num(arrays.costs), 0.0)
    figures: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(arrays.models):
        figures[f"single:{name}"] = {
            "accuracy_macro": macro(scores[:, i], arrays.dataset_ids),
            "cost_per_query": float(costs[:, i].mean()),
        }
    best = np.zeros(n, dtype=np.int64)
    for f in np.unique(fold):
        held = fold == f
        ability = weighted_model_scores(np.ones(int((~held).sum())), arrays.scores[~held])
        best[held] = rank_models(ability)[0]
    rows = np.arange(n)
    picks = most_common([arrays.models[i] for i in best])
    figures["best-single-on-bank"] = {
        "accuracy_macro": macro(scores[rows, best], arrays.dataset_ids),
        "cost_per_query": float(costs[rows, best].mean()),
        "model": picks[0][0],
    }
    knn_score, knn_cost = np.zeros(n), np.zeros(n)
    for q in range(n):
        ranked = rank_models(prep.support_scores[q])
        if len(ranked):
            knn_score[q], knn_cost[q] = scores[q, ranked[0]], costs[q, ranked[0]]
    figures["query-knn"] = {
        "accuracy_macro": macro(knn_score, arrays.dataset_ids),
        "cost_per_query": float(knn_cost.mean()),
    }
    return figures


def most_common(names: Sequence[str]) -> list[tuple[str, int]]:
    """Names by decreasing count."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


def pareto_frontier(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and cost, by increasing cost."""
    frontier: list[Point] = []
    for point in sorted(points, key=lambda p: (p.cost, -p.accuracy)):
        if not frontier or point.accuracy > frontier[-1].accuracy + _TOL:
            frontier.append(point)
    return frontier


def choose(
    points: Sequence[Point],
    figures: dict[str, dict[str, Any]],
    *,
    target_budget: float | None = None,
    target_accuracy: float | None = None,
) -> tuple[Point, dict[str, Any], list[str]]:
    """The chosen point, the objective it was chosen by, and notes on any fallback.

    Accuracy floor: the best single model on the bank and query-kNN (CV). Cost cap: the target
    budget, else the best single model's CV cost. Without a target accuracy, the most accurate
    point within the cap that clears the floor (ties: cheaper, then nearer the paper's knobs);
    with one, the cheapest point that reaches it and the floor.
    """
    check_targets(target_budget, target_accuracy)
    best_single = figures["best-single-on-bank"]
    floor = max(best_single["accuracy_macro"], figures["query-knn"]["accuracy_macro"])
    cap = target_budget if target_budget is not None else best_single["cost_per_query"]
    objective: dict[str, Any] = {
        "accuracy_floor": floor,
        "cost_cap_per_query": cap,
        "target_budget": target_budget,
        "target_accuracy": target_accuracy,
        "rule": (
            "cheapest point reaching the target accuracy and the floor"
            if target_accuracy is not None
            else "most accurate point within the cost cap that clears the accuracy floor"
        ),
    }
    notes: list[str] = []

    def by_accuracy(p: Point) -> tuple[float, float, int]:
        return (-round(p.accuracy, 9), p.cost, p.knobs.distance_to_paper())

    def by_cost(p: Point) -> tuple[float, float, int]:
        return (p.cost, -round(p.accuracy, 9), p.knobs.distance_to_paper())

    if target_accuracy is not None:
        reaching = [p for p in points if p.accuracy >= max(target_accuracy, floor) - _TOL]
        if reaching:
            return min(reaching, key=by_cost), objective, notes
        notes.append(
            f"no grid point reaches accuracy {max(target_accuracy, floor):.4f} in CV: "
            "the most accurate point is chosen"
        )
        return min(points, key=by_accuracy), objective, notes
    within = [p for p in points if p.cost <= cap + _TOL]
    feasible = [p for p in within if p.accuracy >= floor - _TOL]
    if feasible:
        return min(feasible, key=by_accuracy), objective, notes
    if within:
        notes.append(
            f"no grid point within {cap:.6g} USD per query is as accurate as the best single "
            f"model and query-kNN ({floor:.4f}): the most accurate point within the cap"
        )
        return min(within, key=by_accuracy), objective, notes
    notes.append(f"no grid point costs at most {cap:.6g} USD per query: the cheapest point")
    return min(points, key=by_cost), objective, notes


def check_targets(target_budget: float | None, target_accuracy: float | None) -> None:
    """Refuse both targets at once, a budget that is not positive, an accuracy outside (0, 1]."""
    if target_budget is not None and target_accuracy is not None:
        raise CalibrateError("give --target-budget or --target-accuracy, not both")
    if target_budget is not None and not (target_budget > 0 and np.isfinite(target_budget)):
        raise CalibrateError(
            f"--target-budget is in USD per query and must be positive, got {target_budget}"
        )
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise CalibrateError(
            "--target-accuracy is a macro accuracy in (0, 1] (e.g. 0.8 for 80%), "
            f"got {target_accuracy}"
        )


def calibrate(
    bank: str | Path | Bank,
    *,
    pool: Sequence[str] | None = None,
    folds: int = 5,
    seed: int = 42,
    target_budget: float | None = None,
    target_accuracy: float | None = None,
    data: str | Path | None = None,
    write: bool = True,
    progress: bool = False,
) -> Calibration:
    """Cross-validate the knob grid on the bank's rows, choose, and store `calibration.json`.

    The cost weight is part of the grid with or without a target: without one, the cost cap is
    the best single model's own cost.
    """
    check_targets(target_budget, target_accuracy)
    started = time.perf_counter()
    loaded = bank if isinstance(bank, Bank) else Bank.load(bank)
    if write and loaded.path is None:
        raise CalibrateError("the bank has no directory to store its calibration in")
    arrays = bank_arrays(loaded, pool, data)
    fold = fold_of_rows(arrays.size, folds, seed)
    prep = prepare(arrays, fold)
    points = grid_points(COST_WEIGHTS, arrays.size)
    if PAPER_KNOBS not in points:
        points.append(PAPER_KNOBS)
    results = evaluate_grid(arrays, prep, fold, points, progress=progress)
    figures = baselines(arrays, prep, fold)
    chosen, objective, notes = choose(
        results, figures, target_budget=target_budget, target_accuracy=target_accuracy
    )
    paper = next(p for p in results if p.knobs == PAPER_KNOBS)
    figures["paper-config"] = paper.as_dict()
    notes.append(
        "replayed from the bank's arrays: a model with no answer to a held-out row counts as a "
        "failed call (no cost, the next model stands in); the length cut counts completion "
        "tokens"
    )
    ranked = sorted(results, key=lambda p: (-p.accuracy, p.cost))
    return _store(
        loaded,
        arrays,
        chosen,
        results,
        ranked,
        figures,
        objective,
        notes,
        folds=folds,
        seed=seed,
        seconds=time.perf_counter() - started,
        write=write,
    )


def _store(
    bank: Bank,
    arrays: BankArrays,
    chosen: Point,
    results: Sequence[Point],
    ranked: Sequence[Point],
    figures: dict[str, dict[str, Any]],
    objective: dict[str, Any],
    notes: list[str],
    *,
    folds: int,
    seed: int,
    seconds: float,
    write: bool,
) -> Calibration:
    best_single = figures["best-single-on-bank"]
    chosen_figures = chosen.as_dict()
    chosen_figures["meets_floor"] = chosen.accuracy >= objective["accuracy_floor"] - _TOL
    chosen_figures["within_cap"] = chosen.cost <= objective["cost_cap_per_query"] + _TOL
    chosen_figures["vs_best_single"] = round(chosen.accuracy - best_single["accuracy_macro"], 6)
    chosen_figures["cost_vs_best_single"] = (
        round(chosen.cost / best_single["cost_per_query"], 4)
        if best_single["cost_per_query"] > 0
        else None
    )
    calibration = Calibration(
        manifest_sha256=manifest_checksum(bank.path) if bank.path is not None else "",
        pool=list(arrays.models),
        knobs=chosen.knobs.as_dict(),
        objective=objective,
        chosen=chosen_figures,
        baselines={name: _rounded(values) for name, values in figures.items()},
        grid={
            "query_coef": list(QUERY_COEFS),
            "switch_threshold": list(SWITCH_THRESHOLDS),
            "probe_margin": list(PROBE_MARGINS),
            "top_k": list(TOP_KS),
            "candidate_source": list(SOURCES),
            "cost_weight": sorted({p.knobs.cost_weight for p in results}),
            "support_k": sorted({p.knobs.support_k for p in results}),
            "stop_on_agreement, sample_n": [list(pair) for pair in PROBING],
            "points": [len(results)],
        },
        fixed={
            name: getattr(DEFAULTS, name)
            for name in (
                "rag_thres",
                "length_coef",
                "length_order",
                "subset_p",
                "cut_length",
                "vote_majority",
            )
        }
        | {"aggregation": "vote"},
        top=[p.as_dict() for p in ranked[:20]],
        frontier=[p.as_dict() for p in pareto_frontier(results)],
        folds=folds,
        seed=seed,
        rows=arrays.size,
        seconds=round(seconds, 2),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        notes=notes,
    )
    if write and bank.path is not None:
        write_calibration(bank.path, calibration)
    return calibration


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 9) if isinstance(v, float) else v for k, v in values.items()}
