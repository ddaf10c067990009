"""An in-memory cache around any LangChain `Embeddings`, keyed by text.

`jisi eval` embeds every test query and every probe answer inside the graph; a sweep runs the
graph many times over the same rows, and the baselines need the same query vectors again. With
the cache, each distinct text is embedded once per process. Queries (`embed_query`) and documents
(`embed_documents`) are cached apart, since an embedder may treat them differently.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from langchain_core.embeddings import Embeddings

from jisi_graph.embedding import Embedder


@dataclass
class CacheStats:
    """How many texts were served from the cache and how many were embedded."""

    hits: int = 0
    misses: int = 0


class CachedEmbeddings(Embeddings):
    """Wraps an `Embeddings`; each distinct text is embedded once (per kind: query, document)."""

    def __init__(self, inner: Embeddings) -> None:
        """Wrap `inner`, starting with an empty cache."""
        self.inner = inner
        self.stats = CacheStats()
        self._documents: dict[str, np.ndarray] = {}
        self._queries: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """The texts' vectors, embedding only those not seen before (in one batch)."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._documents))
            self.stats.hits += len(texts) - len(missing)
            self.stats.misses += len(missing)
        if missing:
            vectors = self.inner.embed_documents(missing)
            with self._lock:
                self._documents.update(zip(missing, _compact(vectors), strict=True))
        with self._lock:
            return [self._documents[t].tolist() for t in texts]

    def embed_query(self, text: str) -> list[float]:
        """The query's vector, embedded on first sight only."""
        with self._lock:
            cached = self._queries.get(text)
            if cached is not None:
                self.stats.hits += 1
                return cached.tolist()
            self.stats.misses += 1
        vector = self.inner.embed_query(text)
        with self._lock:
            self._queries[text] = _compact([vector])[0]
        return vector


def _compact(vectors: list[list[float]]) -> list[np.ndarray]:
    """Vectors kept as float32 arrays (a tenth of the memory of lists of Python floats)."""
    return list(np.asarray(vectors, dtype=np.float32))


def with_cache(embedder: Embedder) -> Embedder:
    """The same embedder (id, window, dimension) answering from a text cache (answers too).

    An embedder that already caches is returned as is, so that its cache is shared.
    """
    if isinstance(embedder.embeddings, CachedEmbeddings):
        return embedder
    answers = embedder.answer_embeddings
    return replace(
        embedder,
        embeddings=CachedEmbeddings(embedder.embeddings),
        answer_embeddings=CachedEmbeddings(answers) if answers is not None else None,
    )


def cache_stats(embedder: Embedder) -> CacheStats | None:
    """The cache's counts (queries and answers together), if the embedder caches."""
    caches = [embedder.embeddings, embedder.answer_embeddings]
    counted = [c.stats for c in caches if isinstance(c, CachedEmbeddings)]
    if not counted:
        return None
    return CacheStats(hits=sum(s.hits for s in counted), misses=sum(s.misses for s in counted))


def embed_queries(embedder: Embedder, queries: Sequence[str]) -> np.ndarray:
    """The (n, dim) unit vectors of queries, embedded as the graph's `embed` node does.

    Through a cached embedder that has run the graph on these queries, nothing is embedded again.
    """
    if not queries:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.stack([embedder.embed_one(query) for query in queries])
