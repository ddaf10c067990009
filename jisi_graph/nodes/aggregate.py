"""Node `aggregate`: merge the close candidates' answers, by the aggregator model or by vote.

LLM aggregation (the paper's) tries the aggregators in order of A; if every one fails, the graph
routes to the top candidate. Vote aggregation (METHOD.md section 5) costs no call and is used
only where the support set's answers are comparable; elsewhere it routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.messages import SystemMessage
from langgraph.runtime import Runtime

from jisi_graph.calls import call_model, describe_error
from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import answered, calls_of, context_of, emit
from jisi_graph.nodes.switch import SwitchPlan, plan_switch
from jisi_graph.prompts import aggregation_system_prompt
from jisi_graph.resources import ResourceProvider, Resources
from jisi_graph.state import JisiState, ModelCall
from jisi_graph.voting import extract_answer, query_is_votable, vote


def support_is_votable(state: JisiState, context: JisiContext, resources: Resources) -> bool:
    """Whether most of the support set comes from datasets whose answers can be voted on."""
    bank = resources.bank
    datasets = [bank.datasets[bank.dataset_ids[j]] for j in state["support"]]
    return query_is_votable(datasets, bank.manifest.votable, context.vote_majority)


def vote_on(plan: SwitchPlan, state: JisiState) -> tuple[str | None, str | None]:
    """(the winning candidate, None) or (None, why no vote could be held)."""
    replies = answered(state)
    members = plan.members[: plan.n]
    extracted = [extract_answer(replies[m].answer or "") for m in members]
    winner = vote(extracted, plan.scores[: plan.n])
    if winner is None:
        return None, "no final answer could be extracted for a vote: routed"
    return members[winner], None


def make_aggregate(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `aggregate` node bound to a resource provider."""

    def aggregate(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Aggregate the top n candidates' answers as the context's `aggregation` says."""
        context = context_of(runtime, state)
        resources = provider(context)
        plan = plan_switch(state, context)
        members = plan.members[: plan.n]
        votable = support_is_votable(state, context, resources)
        result: dict[str, Any] = {"votable": votable, "members": members, "method": "none"}
        use_vote = context.aggregation == "vote" or (
            context.aggregation == "vote_or_llm" and votable
        )
        emit("aggregation_started", method="vote" if use_vote else "llm", models=members)
        if use_vote:
            if not votable:
                result["fallback"] = "answers here are not comparable (not votable): routed"
                return {"aggregation": result}
            winner, why = vote_on(plan, state)
            if winner is None:
                result["fallback"] = why
            else:
                result.update(method="vote", answer_source=winner)
            return {"aggregation": result}
        calls, aggregator = llm_aggregate(state, plan, context, resources)
        if aggregator is None:
            result["fallback"] = (
                "every aggregator failed: routed to the top candidate"
                if calls
                else "no model may aggregate: routed to the top candidate"
            )
        else:
            result.update(method="llm", aggregator=aggregator, answer_source=aggregator)
        return {"aggregation": result, "calls": [call.model_dump() for call in calls]}

    return aggregate


def aggregator_queue(state: JisiState, context: JisiContext) -> list[str]:
    """The aggregators to try, in order of A, skipping models that already failed this run."""
    failed = {call.model for call in calls_of(state) if not call.ok and call.role != "aggregator"}
    order = [name for name in state.get("aggregator_order") or [] if name not in failed]
    return order[: context.max_aggregators]


def llm_aggregate(
    state: JisiState, plan: SwitchPlan, context: JisiContext, resources: Resources
) -> tuple[list[ModelCall], str | None]:
    """Try the aggregators in order until one answers; (their call records, the one that did)."""
    replies = answered(state)
    members = plan.members[: plan.n]
    confidences = plan.scores[: plan.n] if context.show_confidence else None
    prompt = aggregation_system_prompt([replies[m].answer or "" for m in members], confidences)
    messages = [SystemMessage(content=prompt), *state["messages"]]
    pool = resources.pool
    calls: list[ModelCall] = []
    for name in aggregator_queue(state, context):
        try:
            chat_model = pool.chat_model(name)
        except Exception as error:  # noqa: BLE001 - a model that cannot be made is a failure
            kind, message, _ = describe_error(error)
            calls.append(
                ModelCall(
                    model=name,
                    role="aggregator",
                    ok=False,
                    error=message,
                    error_kind=kind,
                    attempts=0,
                    cost_source="none",
                )
            )
            continue
        call = call_model(
            chat_model,
            pool.model_spec(name),
            messages,
            role="aggregator",
            timeout_s=context.timeout_s,
            max_retries=context.max_retries,
            temperature=context.aggregator_temperature,
            stream_tokens=True,
        )
        calls.append(call)
        if call.ok:
            emit("aggregated", aggregator=name)
            return calls, name
        emit("model_failed", model=name, role="aggregator", error=call.error)
    return calls, None
