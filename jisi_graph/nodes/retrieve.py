"""Node `retrieve`: the support set, the support-set score P of every model, and the probes.

With a cost weight the probes follow P with expected cost folded in; with a probe margin a
clear leader by P is asked alone (adaptive probing): the decision says why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from langgraph.runtime import Runtime

from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import context_of, emit, to_optional_floats
from jisi_graph.resources import ResourceProvider
from jisi_graph.routing import (
    choose_probes,
    clear_leader,
    cost_aware_scores,
    rank_models,
    support_set,
    weighted_model_scores,
)
from jisi_graph.state import JisiState


def make_retrieve(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `retrieve` node bound to a resource provider."""

    def retrieve(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Find S, score the models on it (METHOD.md 1) and pick the probes (3.1).

        With a cost weight, P is ranked with each model's expected cost on S folded in; with a
        probe margin, a model that leads by that margin is asked alone, without probes.
        """
        context = context_of(runtime, state)
        resources = provider(context)
        bank = resources.bank
        query = np.asarray(state["query_embedding"], dtype=np.float32)
        found = bank.neighbours(query, context.support_k, context.rag_thres)
        chosen = support_set(found.similarities, context.support_k, context.rag_thres)
        rows, sims = found.indices[chosen], found.similarities[chosen]
        support_scores = weighted_model_scores(sims, bank.scores[rows])
        expected = weighted_model_scores(sims, bank.costs[rows])
        ranking = cost_aware_scores(support_scores, expected, context.cost_weight, resources.active)
        leader = clear_leader(ranking, resources.active, context.probe_margin)
        probing: dict[str, Any] = {}
        if leader is not None:
            probe_names: list[str] = []
            probing = {
                "skipped": True,
                "model": bank.models[leader],
                "reason": probing_reason(ranking, resources.active, leader, context),
            }
        else:
            ask_all = context.candidate_source == "support" and not context.stop_on_agreement
            count = context.top_k if ask_all else context.sample_n
            probes = choose_probes(ranking, resources.comprehensive, resources.active, count)
            probe_names = [bank.models[i] for i in probes]
        emit(
            "neighbours",
            support_size=len(rows),
            nearest=[bank.ids[j] for j in rows[: context.neighbours_shown]],
        )
        emit("probes", models=probe_names, **({"skipped": probing["reason"]} if probing else {}))
        return {
            "support": rows.tolist(),
            "support_sims": [float(s) for s in sims],
            "support_scores": to_optional_floats(support_scores),
            "support_ranking": to_optional_floats(ranking),
            "expected_costs": [None if np.isnan(c) else float(c) for c in expected],
            "active_models": [m for m, on in zip(bank.models, resources.active, strict=True) if on],
            "probes": probe_names,
            "probing": probing,
        }

    return retrieve


def probing_reason(
    ranking: np.ndarray, active: np.ndarray, leader: int, context: JisiContext
) -> str:
    """Why the probes were skipped: the leader's margin over the runner-up, against the knob."""
    order = rank_models(ranking, active)
    lead = float(ranking[order[0]] - ranking[order[1]]) if len(order) > 1 else float("inf")
    score = "support-set score" + (
        f" with cost weight {context.cost_weight}" if context.cost_weight > 0 else ""
    )
    if len(order) < 2:
        return f"only one pool model has a {score}: routed to it without probes"
    return (
        f"the top model by {score} leads the next by {lead:.4f} >= probe_margin "
        f"{context.probe_margin}: routed to it without probes"
    )
