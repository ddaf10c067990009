"""The math of JiSi (METHOD.md sections 1 to 4) as pure numpy functions.

No LangGraph, no I/O. Conventions:
- a score matrix `scores[j, m]` holds model m's score on bank query j, with NaN where the model
  has no record for that query (missing is not wrong: it takes no part in that model's mean);
- a model whose score cannot be computed (no record in the rows considered) gets NaN, and every
  ranking puts NaN models last;
- rankings break ties by model order (a stable sort), so results are deterministic.
"""

from __future__ import annotations

import math

import numpy as np

from jisi_graph.context import DEFAULTS

_MIN_WEIGHT = 1e-12
_SWITCH_TOLERANCE = 1e-9
_LENGTH_EPSILON = 1e-8


def support_set(
    similarities: np.ndarray,
    k: int = DEFAULTS.support_k,
    rag_thres: float = DEFAULTS.rag_thres,
) -> np.ndarray:
    """Indices of the support set S, by decreasing similarity (METHOD.md section 1).

    `similarities` are the query similarities sq of the bank rows considered (all of them, or
    every row retrieved above the threshold). S = {j : sq[j] >= rag_thres * s_k} where s_k is the
    k-th largest similarity; k is a minimum size, so when s_k is negative (where rag_thres * s_k
    would exceed s_k) the threshold is s_k itself. With fewer than k rows, S is all of them.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim != 1:
        raise ValueError(f"similarities must be one-dimensional, got shape {sims.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    order = np.argsort(-sims, kind="stable")
    if len(sims) <= k:
        return order
    kth = sims[order[k - 1]]
    threshold = min(kth, rag_thres * kth)
    return order[sims[order] >= threshold]


def weighted_model_scores(weights: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-model weighted mean score: sum_j w[j] c[j,m] / sum_j w[j] over the rows m answered.

    Gives P (weights sq over S) and R (weights smix over F). Negative weights count as zero;
    a model with no record in these rows gets NaN.
    """
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(scores, dtype=np.float64)
    if c.ndim != 2 or w.shape != (c.shape[0],):
        raise ValueError(f"weights {w.shape} do not match scores {c.shape}")
    w = np.maximum(w, _MIN_WEIGHT)[:, None]
    present = ~np.isnan(c)
    weight_sum = (w * present).sum(axis=0)
    total = (w * np.where(present, c, 0.0)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight_sum > 0, total / weight_sum, np.nan)


def comprehensive_ability(scores: np.ndarray) -> np.ndarray:
    """G[m]: each model's mean score over the whole bank (NaN for a model with no record)."""
    c = np.asarray(scores, dtype=np.float64)
    return weighted_model_scores(np.ones(c.shape[0]), c)


def aggregator_scores(
    comprehensive: np.ndarray,
    support_scores: np.ndarray,
    beta: float = DEFAULTS.aggregator_beta,
) -> np.ndarray:
    """A[m] = beta * G[m] + (1 - beta) * P[m] (METHOD.md section 2); NaN if either is NaN."""
    g = np.asarray(comprehensive, dtype=np.float64)
    p = np.asarray(support_scores, dtype=np.float64)
    return beta * g + (1.0 - beta) * p


def rank_models(scores: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Model indices by decreasing score; NaN and ineligible models are left out."""
    s = np.asarray(scores, dtype=np.float64)
    keep = ~np.isnan(s)
    if eligible is not None:
        keep &= np.asarray(eligible, dtype=bool)
    order = np.argsort(-np.where(keep, s, -np.inf), kind="stable")
    return order[keep[order]]


def response_similarity(
    probe_embeddings: np.ndarray,
    past_embeddings: np.ndarray,
    past_present: np.ndarray,
) -> np.ndarray:
    """sr[j]: mean over probes m of <e(r_m(q)), e(raw_output[j][m])> (METHOD.md 3.2).

    `probe_embeddings` is (p, d), `past_embeddings` (s, p, d) the same models' past answers to the
    support rows, `past_present` (s, p) whether that past answer exists. A row where no probe model
    has a past answer has no evidence of likeness: 0.
    """
    probes = np.asarray(probe_embeddings, dtype=np.float32)
    past = np.asarray(past_embeddings, dtype=np.float32)
    present = np.asarray(past_present, dtype=bool)
    if past.shape[:2] != present.shape or past.shape[1:] != probes.shape:
        raise ValueError(
            f"shapes disagree: probes {probes.shape}, past {past.shape}, present {present.shape}"
        )
    sims = np.einsum("spd,pd->sp", past, probes).astype(np.float64)
    return _masked_row_mean(sims, present)


def length_similarity(
    probe_lengths: np.ndarray,
    past_lengths: np.ndarray,
    order: float = DEFAULTS.length_order,
) -> np.ndarray:
    """sl[j]: mean over probes m of 1 - D[j,m] / (max_j' D[j',m] + 1e-8) (METHOD.md 3.3).

    D[j,m] = |L[j,m]^p - L_m(q)^p|. `probe_lengths` (p,) are the probes' completion tokens now,
    `past_lengths` (s, p) their completion tokens on the support rows, NaN where unknown.
    """
    now = np.asarray(probe_lengths, dtype=np.float64)
    past = np.asarray(past_lengths, dtype=np.float64)
    if past.ndim != 2 or past.shape[1:] != now.shape:
        raise ValueError(f"shapes disagree: probe lengths {now.shape}, past {past.shape}")
    present = ~np.isnan(past)
    distance = np.abs(np.where(present, past, 0.0) ** order - now**order)
    distance = np.where(present, distance, 0.0)
    largest = distance.max(axis=0, initial=0.0)
    similarity = 1.0 - distance / (largest + _LENGTH_EPSILON)
    return _masked_row_mean(similarity, present)


def mixed_similarity(
    query_sims: np.ndarray,
    response_sims: np.ndarray,
    length_sims: np.ndarray,
    length_coef: float = DEFAULTS.length_coef,
    query_coef: float = DEFAULTS.query_coef,
) -> np.ndarray:
    """smix = (1 - lq) * ((1 - lc) * sr + lc * sl) + lq * sq (METHOD.md 3.4)."""
    sq = np.asarray(query_sims, dtype=np.float64)
    sr = np.asarray(response_sims, dtype=np.float64)
    sl = np.asarray(length_sims, dtype=np.float64)
    response = (1.0 - length_coef) * sr + length_coef * sl
    return (1.0 - query_coef) * response + query_coef * sq


def filtered_set(mixed_sims: np.ndarray, subset_p: float = DEFAULTS.subset_p) -> np.ndarray:
    """F: positions of the top max(1, floor(subset_p * |S|)) rows by smix (METHOD.md 3.5)."""
    smix = np.asarray(mixed_sims, dtype=np.float64)
    if len(smix) == 0:
        return np.zeros(0, dtype=np.int64)
    size = max(1, math.floor(subset_p * len(smix)))
    return np.argsort(-smix, kind="stable")[:size]


def switch_count(candidate_scores: np.ndarray, threshold: float = DEFAULTS.switch_threshold) -> int:
    """n = #{i : R[i] / max R >= t} over the candidates (METHOD.md section 4).

    0 without candidates; 1 (route) when the best score is not positive. A relative score equal to
    t up to rounding counts as clearing it (0.6 / 0.8 is 0.7499999... in floating point).
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"switch threshold must be in (0, 1], got {threshold}")
    r = np.asarray(candidate_scores, dtype=np.float64)
    r = r[~np.isnan(r)]
    if len(r) == 0:
        return 0
    best = r.max()
    if best <= 0:
        return 1
    return int(np.count_nonzero(r / best >= threshold - _SWITCH_TOLERANCE))


def cut_to_length(
    n: int, answer_tokens: list[int] | np.ndarray, cut_length: int = DEFAULTS.cut_length
) -> int:
    """Aggregate fewer answers when three or more hold more than cut_length tokens together.

    METHOD.md: with n = 3 over the cut, aggregate the top 2. For a larger K the same rule drops the
    lowest-ranked answer until the rest fit or two remain.
    """
    tokens = list(answer_tokens)
    if n > len(tokens):
        raise ValueError(f"n = {n} exceeds the {len(tokens)} answers given")
    while n > 2 and sum(tokens[:n]) > cut_length:
        n -= 1
    return n


def _masked_row_mean(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean of each row over its present entries; 0 for a row with none."""
    count = present.sum(axis=1)
    total = np.where(present, values, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def choose_probes(
    support_scores: np.ndarray,
    comprehensive: np.ndarray,
    eligible: np.ndarray,
    n: int = DEFAULTS.sample_n,
) -> np.ndarray:
    """The probes: the top n eligible models by P; models with no P follow, ranked by G."""
    p = np.asarray(support_scores, dtype=np.float64)
    ranked = rank_models(p, eligible).tolist()
    rest = rank_models(comprehensive, np.asarray(eligible, dtype=bool) & np.isnan(p)).tolist()
    return np.array((ranked + rest)[:n], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Options beyond the paper: a cost term and adaptive probing (off by default)
# ----------------------------------------------------------------------------------------------


def min_max_normalise(values: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """(v - min) / (max - min) over the eligible, known values; NaN stays NaN.

    When every eligible value is equal (or there is only one), all of them map to 0. Ineligible
    models are normalised with the same bounds but take no part in setting them.
    """
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    if eligible is not None:
        keep &= np.asarray(eligible, dtype=bool)
    if not keep.any():
        return np.where(np.isnan(v), np.nan, 0.0)
    low, high = float(v[keep].min()), float(v[keep].max())
    if high - low <= 0:
        return np.where(np.isnan(v), np.nan, 0.0)
    return (v - low) / (high - low)


def cost_aware_scores(
    quality: np.ndarray,
    expected_cost: np.ndarray,
    cost_weight: float = DEFAULTS.cost_weight,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Fold expected cost into quality scores: (1 - w) * quality_norm + w * (1 - cost_norm).

    Both are min-max normalised over the eligible models (Avengers-Pro's alpha, with
    w = 1 - alpha). With w = 0 the quality scores come back unchanged, so the paper's scores and
    its relative switch stay exact. A model with no quality score stays NaN; a model whose cost
    is unknown (NaN) counts as the cheapest.
    """
    if not 0 <= cost_weight <= 1:
        raise ValueError(f"cost weight must be in [0, 1], got {cost_weight}")
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(expected_cost, dtype=np.float64)
    if q.shape != c.shape:
        raise ValueError(f"quality {q.shape} and cost {c.shape} disagree")
    if cost_weight == 0:
        return q.copy()
    known = ~np.isnan(q)
    if eligible is not None:
        known &= np.asarray(eligible, dtype=bool)
    quality_norm = min_max_normalise(q, known)
    cost_norm = min_max_normalise(c, known & ~np.isnan(c))
    cost_norm = np.where(np.isnan(cost_norm), 0.0, cost_norm)
    return (1.0 - cost_weight) * quality_norm + cost_weight * (1.0 - cost_norm)


def clear_leader(
    scores: np.ndarray, eligible: np.ndarray | None = None, margin: float | None = None
) -> int | None:
    """The top model when it leads the second by at least `margin`, else None.

    `margin` None never singles a model out (the paper always probes); a margin of 0 always
    does (pure query-kNN routing). A lone eligible model with a score is a clear leader.
    """
    if margin is None:
        return None
    if margin < 0:
        raise ValueError(f"probe margin must be at least 0, got {margin}")
    s = np.asarray(scores, dtype=np.float64)
    ranked = rank_models(s, eligible)
    if len(ranked) == 0:
        return None
    if len(ranked) == 1:
        return int(ranked[0])
    lead = s[ranked[0]] - s[ranked[1]]
    return int(ranked[0]) if lead >= margin - _SWITCH_TOLERANCE else None
