"""Node `score_aggregators`: rank the allowed aggregators by A = beta G + (1 - beta) P."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import context_of, to_array, to_optional_floats
from jisi_graph.resources import ResourceProvider
from jisi_graph.routing import aggregator_scores, rank_models
from jisi_graph.state import JisiState


def make_score_aggregators(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `score_aggregators` node bound to a resource provider."""

    def score_aggregators(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Score every allowed aggregator on the support set (METHOD.md section 2)."""
        context = context_of(runtime, state)
        resources = provider(context)
        models = resources.bank.models
        scores = aggregator_scores(
            resources.comprehensive, to_array(state["support_scores"]), context.aggregator_beta
        )
        order = rank_models(scores, resources.aggregator_allowed)
        allowed = [i for i, ok in enumerate(resources.aggregator_allowed) if ok]
        shown = to_optional_floats(scores[allowed])
        return {
            "aggregator_order": [models[i] for i in order],
            "aggregator_scores": {models[i]: s for i, s in zip(allowed, shown, strict=True)},
        }

    return score_aggregators
