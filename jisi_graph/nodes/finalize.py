"""Node `finalize`: the answer, the decision record, and the query's usage and cost."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.runtime import Runtime

from jisi_graph.context import DEFAULTS, JisiContext
from jisi_graph.nodes.aggregate import aggregator_queue
from jisi_graph.nodes.common import answered, calls_of, context_of, emit
from jisi_graph.nodes.switch import plan_switch
from jisi_graph.resources import ResourceProvider, Resources
from jisi_graph.state import Candidate, Decision, JisiState, ModelCall, Neighbour

QUERY_SHOWN_CHARS = 300


def make_finalize(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `finalize` node bound to a resource provider."""

    def finalize(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Pick the final answer (aggregated, voted or routed) and write the decision."""
        context = context_of(runtime, state)
        resources = provider(context)
        calls = calls_of(state)
        decision = build_decision(state, context, resources, calls)
        replies = {call.model: call for call in calls if call.ok}
        source = decision.answer_source
        error = None
        if source is None:
            failures = "; ".join(f"{m}: {why}" for m, why in decision.failures.items())
            error = "no model answered" + (f" ({failures})" if failures else "")
            decision.mode = "error"
        answer = replies[source].answer if source in replies else ""
        message_id = replies[source].message_id if source in replies else None
        emit("finished", mode=decision.mode, answer_source=source, cost_usd=decision.cost_usd)
        update: dict[str, Any] = {
            "answer": answer or "",
            "decision": decision.model_dump(),
            "usage": decision.usage,
            "cost_usd": decision.cost_usd,
            "error": error,
        }
        if error is None:
            update["messages"] = [AIMessage(content=answer or "", id=message_id, name="jisi")]
        return update

    return finalize


def build_decision(
    state: JisiState, context: JisiContext, resources: Resources, calls: list[ModelCall]
) -> Decision:
    """Everything the run decided, from its state."""
    bank = resources.bank
    support = state.get("support") or []
    sims = state.get("support_sims") or []
    routing = state.get("routing") or {}
    aggregation = state.get("aggregation") or {}
    active = set(state.get("active_models") or [])
    support_scores = dict(zip(bank.models, state.get("support_scores") or [], strict=False))
    routing_scores = dict(zip(bank.models, routing.get("scores") or [], strict=False))
    candidates: list[Candidate] = []
    plan = None
    if routing:
        plan = plan_switch(state, context)
        replies = answered(state)
        # relative to the best candidate that answered, as the switch computes it
        best = max(plan.scores, default=0.0)
        for name in state.get("candidates") or []:
            score = routing_scores.get(name) or 0.0
            candidates.append(
                Candidate(
                    model=name,
                    routing_score=score,
                    relative_score=round(score / best, 6) if best > 0 else 0.0,
                    probe=name in (state.get("probes") or []),
                    answered=name in replies,
                    answer=replies[name].answer if name in replies else None,
                )
            )
    if aggregation.get("answer_source"):
        mode, source = "aggregate", aggregation["answer_source"]
    else:
        mode, source = "route", plan.members[0] if plan and plan.members else None
    fallback = aggregation.get("fallback") or routing.get("note")
    failures = {
        call.model if call.role != "aggregator" else f"{call.model} (aggregator)": (
            f"{call.error_kind}: {call.error}"
        )
        for call in calls
        if not call.ok
    }
    usage = {
        "input_tokens": sum(call.input_tokens for call in calls),
        "output_tokens": sum(call.output_tokens for call in calls),
        "calls": len(calls),
    }
    return Decision(
        query=(state.get("query_text") or "")[:QUERY_SHOWN_CHARS],
        support_size=len(support),
        neighbours=[
            Neighbour(
                id=bank.ids[j],
                dataset=bank.datasets[bank.dataset_ids[j]],
                similarity=round(float(s), 6),
                query=bank.queries[j][-QUERY_SHOWN_CHARS:],
            )
            for j, s in list(zip(support, sims, strict=True))[: context.neighbours_shown]
        ],
        support_scores={m: s for m, s in support_scores.items() if m in active},
        aggregator_scores=state.get("aggregator_scores") or {},
        aggregators=aggregator_queue(state, context),
        probes=state.get("probes") or [],
        probing_skipped=(state.get("probing") or {}).get("reason"),
        expected_costs={
            m: c
            for m, c in zip(bank.models, state.get("expected_costs") or [], strict=False)
            if m in active
        },
        support_ranking_scores=(
            {
                m: s
                for m, s in zip(bank.models, state.get("support_ranking") or [], strict=False)
                if m in active
            }
            if context.cost_weight > 0
            else {}
        ),
        knobs=changed_knobs(context),
        calibrated_knobs=dict(state.get("calibrated_knobs") or {}),
        filtered_size=int(routing.get("filtered_size") or 0),
        routing_scores={m: s for m, s in routing_scores.items() if m in active},
        candidates=candidates,
        switch_n=plan.n if plan else 0,
        switch_threshold=context.switch_threshold,
        mode=mode,
        aggregation_method=aggregation.get("method", "none"),
        votable=bool(aggregation.get("votable", False)),
        aggregator=aggregation.get("aggregator"),
        aggregated=aggregation.get("members", []) if mode == "aggregate" else [],
        answer_source=source,
        fallback=fallback,
        calls=calls,
        failures=failures,
        unused_bank_models=resources.unused_bank_models,
        usage=usage,
        cost_usd=round(sum(call.cost_usd for call in calls), 10),
    )


def changed_knobs(context: JisiContext) -> dict[str, Any]:
    """The knobs of this run that differ from the paper's configuration (bank and pool aside)."""
    return {
        name: value
        for name, value in context.model_dump(exclude={"bank", "pool"}).items()
        if value != getattr(DEFAULTS, name)
    }
