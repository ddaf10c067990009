"""Node `retrieve`: the support set, the support-set score P of every model, and the probes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from langgraph.runtime import Runtime

from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import context_of, emit, to_optional_floats
from jisi_graph.resources import ResourceProvider
from jisi_graph.routing import choose_probes, support_set, weighted_model_scores
from jisi_graph.state import JisiState


def make_retrieve(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `retrieve` node bound to a resource provider."""

    def retrieve(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Find S, score the models on it (METHOD.md 1) and pick the probes (3.1)."""
        context = context_of(runtime)
        resources = provider(context)
        bank = resources.bank
        query = np.asarray(state["query_embedding"], dtype=np.float32)
        found = bank.neighbours(query, context.support_k, context.rag_thres)
        chosen = support_set(found.similarities, context.support_k, context.rag_thres)
        rows, sims = found.indices[chosen], found.similarities[chosen]
        support_scores = weighted_model_scores(sims, bank.scores[rows])
        probes = choose_probes(
            support_scores, resources.comprehensive, resources.active, context.sample_n
        )
        probe_names = [bank.models[i] for i in probes]
        emit(
            "neighbours",
            support_size=len(rows),
            nearest=[bank.ids[j] for j in rows[: context.neighbours_shown]],
        )
        emit("probes", models=probe_names)
        return {
            "support": rows.tolist(),
            "support_sims": [float(s) for s in sims],
            "support_scores": to_optional_floats(support_scores),
            "active_models": [m for m, on in zip(bank.models, resources.active, strict=True) if on],
            "probes": probe_names,
        }

    return retrieve
