"""Avengers-Pro on a tiny synthetic bank whose every number is computed by hand, and the cache.

Bank: two clusters with centroids (1, 0) and (0, 1); three models.

cluster 0 (3 rows)  scores m0 1 1 1   m1 1 0 0   m2 -        costs m0 3 3 3   m1 1 1 1
cluster 1 (2 rows)  scores m0 0 1     m1 1 1     m2 1 0      costs m0 2 2     m1 null 1   m2 4 4

acc  c0: m0 1,   m1 1/3, m2 unavailable     cost c0: m0 3, m1 1
acc  c1: m0 1/2, m1 1,   m2 1/2             cost c1: m0 2, m1 1/2 (null counts 0), m2 4
accn c0: 1, 0;  costn c0: 1, 0              accn c1: 0, 1, 0;  costn c1: 3/7, 0, 1
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings

from jisi_graph.bank.schema import BankRow
from jisi_graph.baselines.avengers_pro import (
    AvengersPro,
    ClusterProfile,
    cluster_weights,
    fit_profile,
    profile_clusters,
    route,
    score_picks,
    tradeoff_scores,
)
from jisi_graph.embedding import Embedder
from jisi_graph.embedding_cache import (
    CachedEmbeddings,
    cache_stats,
    embed_queries,
    with_cache,
)
from jisi_graph.scoring import Outcome

NAN = float("nan")
MODELS = ["m0", "m1", "m2"]
LABELS = np.array([0, 0, 0, 1, 1])
CENTROIDS = np.array([[1.0, 0.0], [0.0, 1.0]])
SCORES = np.array(
    [[1, 1, NAN], [1, 0, NAN], [1, 0, NAN], [0, 1, 1], [1, 1, 0]],
    dtype=float,
)
COSTS = np.array(
    [[3, 1, NAN], [3, 1, NAN], [3, 1, NAN], [2, NAN, 4], [2, 1, 4]],
    dtype=float,
)


@pytest.fixture
def profile() -> ClusterProfile:
    return profile_clusters(LABELS, CENTROIDS, SCORES, COSTS)


def test_profile_means_per_cluster(profile: ClusterProfile) -> None:
    assert profile.k == 2
    assert profile.sizes.tolist() == [3, 2]
    np.testing.assert_allclose(profile.accuracy, [[1, 1 / 3, NAN], [0.5, 1, 0.5]])
    np.testing.assert_allclose(profile.cost, [[3, 1, NAN], [2, 0.5, 4]])


def test_tradeoff_scores_by_hand(profile: ClusterProfile) -> None:
    # x = alpha accn + (1 - alpha)(1 - costn); unavailable m2 in c0 scores 0.
    np.testing.assert_allclose(
        tradeoff_scores(profile, 0.7), [[0.7, 0.3, 0.0], [0.3 * 4 / 7, 1.0, 0.0]]
    )
    np.testing.assert_allclose(tradeoff_scores(profile, 1.0), [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(tradeoff_scores(profile, 0.0), [[0, 1, 0], [4 / 7, 1, 0]])
    with pytest.raises(ValueError, match="alpha must be in"):
        tradeoff_scores(profile, 1.5)


def test_flat_cluster_normalises_to_zero() -> None:
    flat = profile_clusters(
        np.array([0, 0]), np.array([[1.0, 0.0]]), np.ones((2, 2)), np.ones((2, 2))
    )
    # accn = costn = 0 for both: x = 1 - alpha for each, so the first model wins the tie.
    np.testing.assert_allclose(tradeoff_scores(flat, 0.25), [[0.75, 0.75]])
    assert route(flat, np.array([[1.0, 0.0]])).tolist() == [0]


def test_cluster_weights_softmax_of_distance(profile: ClusterProfile) -> None:
    queries = np.array([[1.0, 0.0], [0.6, 0.8]])
    nearest, weights = cluster_weights(profile, queries, top_p=2, temperature=1.0)
    assert nearest.tolist() == [[0, 1], [1, 0]]
    w = 1 / (1 + math.exp(-math.sqrt(2)))
    gap = math.sqrt(0.8) - math.sqrt(0.4)
    v = 1 / (1 + math.exp(-gap))
    np.testing.assert_allclose(weights, [[w, 1 - w], [v, 1 - v]], rtol=1e-9)
    # top_p = 1 is nearest-cluster routing; top_p above k is capped at k.
    one, w1 = cluster_weights(profile, queries, top_p=1)
    assert one.tolist() == [[0], [1]] and w1.tolist() == [[1.0], [1.0]]
    assert cluster_weights(profile, queries, top_p=9)[0].shape == (2, 2)
    with pytest.raises(ValueError, match="temperature"):
        cluster_weights(profile, queries, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        cluster_weights(profile, queries, top_p=0)


def test_route_trades_accuracy_for_cost(profile: ClusterProfile) -> None:
    near_c0 = np.array([[1.0, 0.0]])
    # alpha 0.7, T = 1: S[m0] = w .7 + (1 - w) .3 * 4/7 = 0.597 > S[m1] = w .3 + (1 - w) = 0.437.
    assert route(profile, near_c0, alpha=0.7, top_p=2, temperature=1.0).tolist() == [0]
    # Cost only: m1 is the cheapest in both clusters.
    assert route(profile, near_c0, alpha=0.0, top_p=2, temperature=1.0).tolist() == [1]
    # Near c1, m1 is best and cheapest.
    assert route(profile, np.array([[0.0, 1.0]]), alpha=0.7).tolist() == [1]
    # Equidistant query, accuracy only: S = [.5, .5, 0], the tie goes to the first model.
    middle = np.array([[math.sqrt(0.5), math.sqrt(0.5)]])
    assert route(profile, middle, alpha=1.0, top_p=2, temperature=1.0).tolist() == [0]


def test_fit_recovers_the_clusters_and_caps_k() -> None:
    points = np.array([[1.0, 0.0], [0.99, 0.14], [0.98, -0.2], [0.0, 1.0], [0.1, 0.995]])
    fitted = fit_profile(points, SCORES, COSTS, k=2, seed=0)
    order = np.argsort(-fitted.centroids[:, 0])  # the cluster near (1, 0) first
    assert fitted.sizes[order].tolist() == [3, 2]
    np.testing.assert_allclose(fitted.accuracy[order], [[1, 1 / 3, NAN], [0.5, 1, 0.5]])
    # Five points, k = 60: k is capped at the number of distinct embeddings.
    assert fit_profile(points, SCORES, COSTS, k=60).k == 5
    with pytest.raises(ValueError, match="no bank embeddings"):
        fit_profile(np.zeros((0, 2)), SCORES[:0], COSTS[:0])


def test_router_names_and_scores_picks() -> None:
    points = np.array([[1.0, 0.0], [0.99, 0.14], [0.98, -0.2], [0.0, 1.0], [0.1, 0.995]])
    router = AvengersPro.fit(points, SCORES, COSTS, MODELS, k=2, top_p=1)
    assert router.picks(np.array([[1.0, 0.0], [0.0, 1.0]]), alpha=0.7) == ["m0", "m1"]
    assert router.picks(np.array([[1.0, 0.0]]), alpha=0.0) == ["m1"]
    with pytest.raises(ValueError, match="3 score columns for 2 models"):
        AvengersPro.fit(points, SCORES, COSTS, ["m0", "m1"], k=2)
    row = BankRow.model_validate(
        {
            "query": "q",
            "dataset": "d",
            "records": {"m0": 1.0, "m1": 0.0},
            "usages": {"m0": {"prompt_tokens": 1, "completion_tokens": 1, "cost": 0.5}},
            "raw_output": {"m0": "a", "m1": "b"},
        }
    )
    assert score_picks([row, row, row], ["m0", "m1", "m2"]) == [
        Outcome("m0", 1.0, 0.5),
        Outcome("m1", 0.0, 0.0),
        Outcome("m2", 0.0, 0.0),
    ]


# --------------------------------------------------------------------------------------------
# The embedding cache
# --------------------------------------------------------------------------------------------


class CountingEmbeddings(Embeddings):
    def __init__(self) -> None:
        self.documents: list[str] = []
        self.queries: list[str] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.extend(texts)
        return [[float(len(t)), 1.0] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        return [1.0, float(len(text))]


def test_cache_embeds_each_text_once_per_kind() -> None:
    inner = CountingEmbeddings()
    cached = CachedEmbeddings(inner)
    assert cached.embed_documents(["ab", "c", "ab"]) == [[2.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    assert cached.embed_documents(["c", "def"]) == [[1.0, 1.0], [3.0, 1.0]]
    assert inner.documents == ["ab", "c", "def"]
    assert cached.embed_query("ab") == [1.0, 2.0]
    assert cached.embed_query("ab") == [1.0, 2.0]
    assert inner.queries == ["ab"]
    assert (cached.stats.hits, cached.stats.misses) == (3, 4)


def test_with_cache_keeps_identity_and_shares_the_cache() -> None:
    inner = CountingEmbeddings()
    embedder = Embedder(embeddings=inner, id="test:counting", window=8, _dim=2)
    cached = with_cache(embedder)
    assert (cached.id, cached.window, cached.dim) == ("test:counting", 8, 2)
    assert with_cache(cached) is cached
    assert cache_stats(embedder) is None
    vectors = embed_queries(cached, ["a", "bbb", "a"])
    np.testing.assert_allclose(vectors[0], np.array([1.0, 1.0]) / math.sqrt(2))
    np.testing.assert_allclose(vectors[1], np.array([1.0, 3.0]) / math.sqrt(10))
    assert inner.queries == ["a", "bbb"]
    stats: Any = cache_stats(cached)
    assert (stats.hits, stats.misses) == (1, 2)
    assert embed_queries(cached, []).shape == (0, 2)


def test_with_cache_caches_the_answer_embeddings_apart() -> None:
    queries, answers = CountingEmbeddings(), CountingEmbeddings()
    embedder = Embedder(
        embeddings=queries, id="test:two", window=8, _dim=2, answer_embeddings=answers
    )
    cached = with_cache(embedder)
    assert isinstance(cached.answer_embeddings, CachedEmbeddings)
    cached.embed(["q1", "q1"])
    cached.embed_answers(["a1", "a22", "a1"])
    cached.embed_answers(["a22"])
    assert queries.documents == ["q1"] and answers.documents == ["a1", "a22"]
    stats: Any = cache_stats(cached)
    # `embed` sends each distinct text once: q1, a1 and a22 are misses, a22 asked again a hit
    assert (stats.hits, stats.misses) == (1, 3)
    # without answer embeddings, nothing is invented
    assert with_cache(Embedder(embeddings=queries, id="test:one")).answer_embeddings is None
