"""The conditional edges: send the probes, send the candidates, and the adaptive switch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from langgraph.runtime import Runtime
from langgraph.types import Send

from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import answered, context_of
from jisi_graph.routing import cut_to_length, switch_count
from jisi_graph.state import GenerateTask, JisiState


@dataclass(frozen=True)
class SwitchPlan:
    """The candidates that answered, in routing order, and how many of them to aggregate."""

    members: list[str]
    scores: list[float]
    n: int

    @property
    def mode(self) -> Literal["route", "aggregate"]:
        """Aggregate when two or more candidates come close, else route."""
        return "aggregate" if self.n >= 2 else "route"


def plan_switch(state: JisiState, context: JisiContext) -> SwitchPlan:
    """Apply the switch rule (METHOD.md section 4) to the candidates that answered."""
    replies = answered(state)
    scores_by_model = dict(zip(_bank_order(state), state["routing"]["scores"], strict=False))
    members = [m for m in state.get("candidates") or [] if m in replies]
    scores = [float(scores_by_model.get(m) or 0.0) for m in members]
    n = switch_count(scores, context.switch_threshold) if members else 0
    if n >= 2:
        n = cut_to_length(n, [replies[m].answer_tokens for m in members], context.cut_length)
    return SwitchPlan(members=members, scores=scores, n=n)


def _bank_order(state: JisiState) -> Sequence[str]:
    return state["routing"]["models"]


def dispatch_probes(state: JisiState) -> list[Send] | Literal["finalize"]:
    """Send each probe to `generate` as its own branch; no probe at all goes to `finalize`.

    When adaptive probing skipped the probes, the clear leader is asked alone, as a candidate.
    """
    probes = state.get("probes") or []
    leader = (state.get("probing") or {}).get("model")
    if not probes and leader:
        return [
            Send(
                "generate", GenerateTask(model=leader, role="candidate", messages=state["messages"])
            )
        ]
    if not probes:
        return "finalize"
    return [
        Send("generate", GenerateTask(model=m, role="probe", messages=state["messages"]))
        for m in probes
    ]


def switch(state: JisiState, runtime: Runtime[JisiContext]) -> Literal["aggregate", "finalize"]:
    """The adaptive switch: aggregate the close candidates, or route to the top one."""
    return (
        "aggregate"
        if plan_switch(state, context_of(runtime, state)).mode == "aggregate"
        else "finalize"
    )


def after_route(
    state: JisiState, runtime: Runtime[JisiContext]
) -> list[Send] | Literal["aggregate", "finalize"]:
    """Ask the candidates that were not probes; once all have answered, the switch decides."""
    pending = state.get("pending") or []
    if pending:
        return [
            Send("generate", GenerateTask(model=m, role="candidate", messages=state["messages"]))
            for m in pending
        ]
    return switch(state, runtime)
