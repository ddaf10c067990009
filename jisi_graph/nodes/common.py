"""Small helpers shared by the nodes: the run's context, stream events, records from state."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from langgraph.config import get_stream_writer
from langgraph.runtime import Runtime

from jisi_graph.context import DEFAULTS, JisiContext
from jisi_graph.state import JisiState, ModelCall


class JisiInputError(ValueError):
    """The input cannot be answered: no query, an empty one, or no user turn."""


def context_of(
    runtime: Runtime[JisiContext] | None, state: Mapping[str, Any] | None = None
) -> JisiContext:
    """The run's context, or the defaults when the caller gave none.

    Once the `embed` node has resolved the run's knobs (the caller's context plus the bank's
    calibration) into `state["knobs"]`, every later node and edge reads them from there.
    """
    knobs = state.get("knobs") if state is not None else None
    if knobs:
        return JisiContext(**knobs)
    context = getattr(runtime, "context", None)
    if context is None:
        return DEFAULTS
    if isinstance(context, dict):
        return JisiContext(**context)
    return context


def emit(event: str, **data: Any) -> None:
    """Write a progress event to LangGraph's custom stream (a no-op outside streaming)."""
    try:
        writer = get_stream_writer()
    except RuntimeError:
        return
    writer({"event": event, **data})


def to_optional_floats(values: Iterable[float]) -> list[float | None]:
    """Floats for the state and the decision, NaN as None (JSON has no NaN)."""
    return [None if math.isnan(v) else round(float(v), 6) for v in values]


def to_array(values: Sequence[float | None]) -> np.ndarray:
    """The inverse of `to_optional_floats`: None back to NaN."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def calls_of(state: JisiState) -> list[ModelCall]:
    """Every model call of this run so far, as records."""
    return [ModelCall.model_validate(call) for call in state.get("calls") or []]


def answered(state: JisiState) -> dict[str, ModelCall]:
    """The successful probe and candidate calls, by model."""
    return {
        call.model: call
        for call in calls_of(state)
        if call.ok and call.role in ("probe", "candidate")
    }
