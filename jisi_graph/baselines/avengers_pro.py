"""Avengers-Pro (Zhang et al., 2025): a cluster router with a performance-cost trade-off.

An independent implementation from the method's description, as a baseline for `jisi eval`.

Offline, on the bank (never the test rows):

1. k-means (scikit-learn, k-means++ with a fixed seed) clusters the bank's unit query embeddings
   into `k` clusters (default 60, the paper's; capped at the number of distinct embeddings).
2. For each cluster c and pool model m with at least one record in c:
   `acc[c,m]`  = mean recorded score of m over the rows of c where m has a record;
   `cost[c,m]` = mean recorded cost of m over those rows (a null cost counts as 0, as in
   `jisi_graph.scoring`). A model with no record in c is *unavailable* there.
3. Min-max normalisation per cluster, across the models available there:
   `accn[c,m]  = (acc[c,m]  - min_m' acc[c,m'])  / (max_m' acc[c,m']  - min_m' acc[c,m'])`,
   `costn[c,m] = (cost[c,m] - min_m' cost[c,m']) / (max_m' cost[c,m'] - min_m' cost[c,m'])`,
   either taken as 0 for every model when the cluster's max equals its min.
4. The trade-off score, alpha in [0, 1] (1: accuracy only, 0: cost only):
   `x[c,m] = alpha * accn[c,m] + (1 - alpha) * (1 - costn[c,m])`, and `x[c,m] = 0` (the lowest
   possible score) where m is unavailable.

Online, for a query with unit embedding `e`:

5. `d[c] = ||e - centroid[c]||` (Euclidean); the `top_p` nearest clusters N (default 3).
6. Weights `w[c] = exp(-d[c] / T) / sum_{c' in N} exp(-d[c'] / T)` over N, temperature T (default
   0.05: with all-MiniLM-L6-v2 the three nearest centroids of a bank query lie 0.04-0.06 apart in
   distance, so the nearest weighs about twice the second; a large T weighs N uniformly, a tiny T
   is nearest-cluster routing).
7. `S[m] = sum_{c in N} w[c] * x[c,m]`; route to `argmax_m S[m]` (ties: the first model in pool
   order). The query costs that one model's call.

With 1.4k-2.2k bank rows, k = 60 leaves about 25-35 rows per cluster on average (an accuracy
estimate per cluster with a standard error near 0.09), and the top-3 weighting pools about three
clusters' worth; k is a parameter for smaller or larger banks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.scoring import Outcome, recorded_cost, recorded_score

DEFAULT_CLUSTERS = 60
DEFAULT_TOP_P = 3
DEFAULT_TEMPERATURE = 0.05
DEFAULT_ALPHA = 0.7
DEFAULT_SEED = 0
DEFAULT_N_INIT = 3


@dataclass(frozen=True)
class ClusterProfile:
    """Per-cluster centroids and per-model accuracy and cost (NaN where a model is unavailable)."""

    centroids: np.ndarray
    accuracy: np.ndarray
    cost: np.ndarray
    sizes: np.ndarray

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centroids.shape[0])


def profile_clusters(
    labels: np.ndarray, centroids: np.ndarray, scores: np.ndarray, costs: np.ndarray
) -> ClusterProfile:
    """Per-cluster mean score and mean cost of each model (steps 2 of the module docstring).

    `labels` (rows,) gives each bank row's cluster, `centroids` (k, dim) the clusters' centres;
    `scores` and `costs` (rows, models) hold NaN where a model has no record (`costs` also where
    the cost was null, which counts as 0 for a model that has a record).
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    if scores.shape != costs.shape or scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"shapes do not fit: labels {labels.shape}, scores {scores.shape}, costs {costs.shape}"
        )
    k, models = int(centroids.shape[0]), scores.shape[1]
    recorded = ~np.isnan(scores)
    paid = np.where(recorded, np.nan_to_num(costs, nan=0.0), 0.0)
    accuracy = np.full((k, models), np.nan)
    cost = np.full((k, models), np.nan)
    sizes = np.bincount(labels, minlength=k)[:k]
    for c in range(k):
        members = labels == c
        counts = recorded[members].sum(axis=0)
        available = counts > 0
        sums = np.where(recorded[members], scores[members], 0.0).sum(axis=0)
        accuracy[c, available] = sums[available] / counts[available]
        cost[c, available] = paid[members].sum(axis=0)[available] / counts[available]
    return ClusterProfile(
        centroids=np.asarray(centroids, dtype=np.float64),
        accuracy=accuracy,
        cost=cost,
        sizes=sizes,
    )


def fit_profile(
    embeddings: np.ndarray,
    scores: np.ndarray,
    costs: np.ndarray,
    *,
    k: int = DEFAULT_CLUSTERS,
    seed: int = DEFAULT_SEED,
    n_init: int = DEFAULT_N_INIT,
) -> ClusterProfile:
    """Cluster the bank's query embeddings with k-means (fixed seed) and profile each cluster.

    k is capped at the number of distinct embeddings. Deterministic for a given seed.
    """
    from sklearn.cluster import KMeans

    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError("no bank embeddings to cluster")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    distinct = np.unique(vectors, axis=0).shape[0]
    clusters = min(k, distinct)
    model = KMeans(n_clusters=clusters, random_state=seed, n_init=n_init).fit(vectors)
    return profile_clusters(model.labels_, model.cluster_centers_, scores, costs)


def _minmax_rows(values: np.ndarray) -> np.ndarray:
    """Each row scaled to [0, 1] over its non-NaN entries; 0 where a row's max equals its min."""
    low = np.nanmin(np.where(np.isnan(values), np.inf, values), axis=1, keepdims=True)
    high = np.nanmax(np.where(np.isnan(values), -np.inf, values), axis=1, keepdims=True)
    span = high - low
    safe = np.where(np.isfinite(span) & (span > 0), span, 1.0)
    scaled = (values - np.where(np.isfinite(low), low, 0.0)) / safe
    return np.where(np.isfinite(span) & (span > 0), scaled, 0.0)


def tradeoff_scores(profile: ClusterProfile, alpha: float) -> np.ndarray:
    """x[c, m] = alpha * accn + (1 - alpha) * (1 - costn); 0 where m is unavailable in c."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    available = ~np.isnan(profile.accuracy)
    accuracy = _minmax_rows(profile.accuracy)
    cost = _minmax_rows(profile.cost)
    scores = alpha * accuracy + (1.0 - alpha) * (1.0 - cost)
    return np.where(available, scores, 0.0)


def cluster_weights(
    profile: ClusterProfile,
    queries: np.ndarray,
    *,
    top_p: int = DEFAULT_TOP_P,
    temperature: float = DEFAULT_TEMPERATURE,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query: its `top_p` nearest clusters and their softmax(-distance / T) weights.

    Returns (indices, weights), both (queries, p) with p = min(top_p, k), nearest first.
    """
    if top_p < 1:
        raise ValueError(f"top_p must be at least 1, got {top_p}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    points = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    squared = (
        (points**2).sum(axis=1, keepdims=True)
        - 2.0 * points @ profile.centroids.T
        + (profile.centroids**2).sum(axis=1)[None, :]
    )
    distances = np.sqrt(np.maximum(squared, 0.0))
    p = min(top_p, profile.k)
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :p]
    near = np.take_along_axis(distances, nearest, axis=1)
    logits = -(near - near[:, :1]) / temperature
    weights = np.exp(logits)
    return nearest, weights / weights.sum(axis=1, keepdims=True)


def route(
    profile: ClusterProfile,
    queries: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    top_p: int = DEFAULT_TOP_P,
    temperature: float = DEFAULT_TEMPERATURE,
) -> np.ndarray:
    """The column (model) each query is routed to: argmax_m sum_c w[c] x[c, m] (first on ties)."""
    nearest, weights = cluster_weights(profile, queries, top_p=top_p, temperature=temperature)
    table = tradeoff_scores(profile, alpha)
    totals = np.einsum("qp,qpm->qm", weights, table[nearest])
    return np.argmax(totals, axis=1)


@dataclass(frozen=True)
class AvengersPro:
    """A fitted router over named models (the columns of the profile)."""

    profile: ClusterProfile
    models: list[str]
    top_p: int = DEFAULT_TOP_P
    temperature: float = DEFAULT_TEMPERATURE

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        scores: np.ndarray,
        costs: np.ndarray,
        models: Sequence[str],
        *,
        k: int = DEFAULT_CLUSTERS,
        seed: int = DEFAULT_SEED,
        top_p: int = DEFAULT_TOP_P,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> AvengersPro:
        """Fit on bank arrays whose columns are `models` (the pool's columns only)."""
        if np.asarray(scores).shape[1] != len(models):
            raise ValueError(
                f"{np.asarray(scores).shape[1]} score columns for {len(models)} models"
            )
        profile = fit_profile(embeddings, scores, costs, k=k, seed=seed)
        return cls(profile, list(models), top_p, temperature)

    @classmethod
    def from_bank(
        cls,
        bank: Bank,
        pool: Sequence[str],
        *,
        k: int = DEFAULT_CLUSTERS,
        seed: int = DEFAULT_SEED,
        top_p: int = DEFAULT_TOP_P,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> AvengersPro:
        """Fit on a bank's query embeddings and its `pool` models' score and cost columns."""
        columns = [bank.model_index(name) for name in pool]
        return cls.fit(
            np.asarray(bank.query_embeddings),
            bank.scores[:, columns],
            bank.costs[:, columns],
            pool,
            k=k,
            seed=seed,
            top_p=top_p,
            temperature=temperature,
        )

    def picks(self, queries: np.ndarray, alpha: float = DEFAULT_ALPHA) -> list[str]:
        """The model routed to for each query embedding."""
        columns = route(
            self.profile, queries, alpha=alpha, top_p=self.top_p, temperature=self.temperature
        )
        return [self.models[int(c)] for c in columns]


def avengers_pro_outcomes(
    bank: Bank,
    pool: Sequence[str],
    rows: Sequence[BankRow],
    queries: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> list[Outcome]:
    """Avengers-Pro at `alpha` (default k, top-p, temperature) on the rows, graded by records.

    Fitted on the bank's `pool` columns; `queries` are the rows' query embeddings, in order.
    """
    router = AvengersPro.from_bank(bank, pool)
    return score_picks(rows, router.picks(queries, alpha))


def score_picks(rows: Sequence[BankRow], picks: Sequence[str | None]) -> list[Outcome]:
    """Each row graded by its pick's recorded score, at the pick's recorded cost."""
    if len(rows) != len(picks):
        raise ValueError(f"{len(picks)} picks for {len(rows)} rows")
    return [
        Outcome(pick, recorded_score(row, pick), recorded_cost(row, pick))
        for row, pick in zip(rows, picks, strict=True)
    ]
