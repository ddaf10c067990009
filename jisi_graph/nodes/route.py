"""Node `route`: query-response mixed routing (METHOD.md section 3) and the candidates.

On its first pass it scores the routing from the probes' answers; when candidates that were not
probes have been called, it runs again (the fan-in of their branches) to take their answers in,
and replaces a candidate that failed by the next model, for a bounded number of rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from langgraph.runtime import Runtime

from jisi_graph.context import JisiContext
from jisi_graph.nodes.aggregate import support_is_votable
from jisi_graph.nodes.common import (
    answered,
    calls_of,
    context_of,
    emit,
    to_array,
    to_optional_floats,
)
from jisi_graph.nodes.switch import plan_switch
from jisi_graph.resources import ResourceProvider, Resources
from jisi_graph.routing import (
    cost_aware_scores,
    filtered_set,
    length_similarity,
    mixed_similarity,
    rank_models,
    response_similarity,
    weighted_model_scores,
)
from jisi_graph.state import JisiState
from jisi_graph.voting import extract_answer


def routing_scores(state: JisiState, context: JisiContext, resources: Resources) -> dict[str, Any]:
    """R per model from the answered probes; query similarity alone if no probe answered.

    With a cost weight, R has each model's expected cost on the support set folded in. When
    probing was skipped or the candidates come from the support set, the ranking is P's.
    """
    bank = resources.bank
    probing = state.get("probing") or {}
    if probing.get("skipped") or context.candidate_source == "support":
        # candidates straight from the support-set ranking (cost term included)
        return {
            "models": list(bank.models),
            "scores": list(state.get("support_ranking") or state["support_scores"]),
            "filtered_size": 0,
            "rounds": 0,
            "source": "support",
            "note": probing.get("reason"),
        }
    rows = np.asarray(state["support"], dtype=np.int64)
    query_sims = np.asarray(state["support_sims"], dtype=np.float64)
    probes = [call for call in calls_of(state) if call.role == "probe" and call.ok]
    note = None
    if probes:
        columns = [bank.model_index(call.model) for call in probes]
        probe_vectors = resources.embedder.embed_answers(
            [call.answer or "" for call in probes], window=bank.manifest.embedder.answer_window
        )
        past = bank.answer_embeddings[rows][:, columns, :].astype(np.float32)
        present = bank.answered[rows][:, columns]
        response = response_similarity(probe_vectors, past, present)
        lengths_now = [call.output_tokens or call.answer_tokens for call in probes]
        past_lengths = bank.completion_tokens[rows][:, columns]
        length = length_similarity(np.asarray(lengths_now), past_lengths, context.length_order)
        mixed = mixed_similarity(
            query_sims, response, length, context.length_coef, context.query_coef
        )
    else:
        mixed = query_sims
        note = "no probe answered: routing scored on query similarity alone"
    kept = filtered_set(mixed, context.subset_p)
    quality = weighted_model_scores(mixed[kept], bank.scores[rows[kept]])
    expected = to_array(state.get("expected_costs") or [None] * len(bank.models))
    scores = cost_aware_scores(quality, expected, context.cost_weight, resources.active)
    routing: dict[str, Any] = {
        "models": list(bank.models),
        "scores": to_optional_floats(scores),
        "filtered_size": int(len(kept)),
        "rounds": 0,
        "source": "mixed",
        "note": note,
    }
    if context.cost_weight > 0:
        routing["quality_scores"] = to_optional_floats(quality)
    return routing


def make_route(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `route` node bound to a resource provider."""

    def route(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Rank the candidates by R and list the ones still to be asked."""
        context = context_of(runtime, state)
        resources = provider(context)
        routing = dict(state.get("routing") or {})
        direct = bool((state.get("probing") or {}).get("skipped"))
        if "scores" not in routing:
            routing = routing_scores(state, context, resources)
            if context.stop_on_agreement and not direct and probes_agree(state, resources, context):
                routing["agreed"] = True
                routing["note"] = "the probes agree on the final answer: no further candidates"
        failed = {call.model for call in calls_of(state) if not call.ok}
        have_answer = answered(state)
        models = resources.bank.models
        eligible = resources.active & np.array([m not in failed for m in models], dtype=bool)
        ranked = [models[i] for i in rank_models(to_array(routing["scores"]), eligible)]
        if routing.get("agreed"):
            probes = set(state.get("probes") or [])
            candidates = [m for m in ranked if m in probes and m in have_answer][: context.top_k]
        else:
            candidates = ranked[: 1 if direct else context.top_k]
        pending = [m for m in candidates if m not in have_answer]
        if pending and routing["rounds"] >= context.max_candidate_rounds:
            candidates = [m for m in candidates if m in have_answer]
            pending = []
        if pending:
            routing["rounds"] += 1
            emit("candidates_called", models=pending)
        emit("candidates", models=candidates)
        if not pending:
            plan = plan_switch({**state, "routing": routing, "candidates": candidates}, context)
            emit("switched", mode=plan.mode, n=plan.n, candidates=plan.members)
        return {"routing": routing, "candidates": candidates, "pending": pending}

    return route


def probes_agree(state: JisiState, resources: Resources, context: JisiContext) -> bool:
    """Whether two or more probes answered a votable query with one and the same final answer."""
    replies = [call for call in calls_of(state) if call.role == "probe" and call.ok]
    if len(replies) < 2 or not support_is_votable(state, context, resources):
        return False
    answers = {extract_answer(call.answer or "") for call in replies}
    return len(answers) == 1 and None not in answers
