"""The graph's state: what comes in, what goes out, what the nodes pass along, and its records.

Records are pydantic models stored in the state as plain dicts (`model_dump()`), so the state
serialises as JSON for checkpointers, LangGraph Studio and the HTTP API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

CallRole = Literal["probe", "candidate", "aggregator"]
CostSource = Literal["prices", "recorded", "estimated", "none"]
"""Where a call's cost comes from: reported tokens at the pool's prices, the replay's recorded
cost, tokens estimated by the tokenizer (the reply had no usage) at the pool's prices, or none
(the call failed)."""


class ModelCall(BaseModel):
    """One model call and what came of it; a failure is a record, not an exception."""

    model: str
    role: CallRole
    ok: bool
    answer: str | None = None
    error: str | None = Field(default=None, description="Why the call failed, if it did")
    error_kind: str | None = None
    attempts: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    answer_tokens: int = Field(default=0, description="cl100k tokens of the answer text")
    cost_usd: float = 0.0
    cost_source: CostSource = "prices"
    latency_s: float = 0.0
    message_id: str | None = Field(default=None, description="Id of the reply message")


class Neighbour(BaseModel):
    """A bank query in the support set."""

    id: str
    dataset: str
    similarity: float
    query: str


class Candidate(BaseModel):
    """A model ranked by routing score, with its answer if it gave one."""

    model: str
    routing_score: float
    relative_score: float
    probe: bool
    answered: bool
    answer: str | None = Field(default=None, description="The candidate's answer, if it gave one")


class Decision(BaseModel):
    """Everything JiSi decided for one query, in the order it decided it."""

    query: str
    support_size: int
    neighbours: list[Neighbour]
    support_scores: dict[str, float | None] = Field(description="P per model")
    aggregator_scores: dict[str, float | None] = Field(description="A per allowed aggregator")
    aggregators: list[str] = Field(description="Aggregators in the order they would be tried")
    probes: list[str]
    probing_skipped: str | None = Field(
        default=None, description="Why no probes were asked (adaptive probing), if none were"
    )
    expected_costs: dict[str, float | None] = Field(
        default_factory=dict, description="Expected cost per model on the support set (USD)"
    )
    support_ranking_scores: dict[str, float | None] = Field(
        default_factory=dict, description="P with the cost term folded in (cost_weight > 0)"
    )
    knobs: dict[str, Any] = Field(
        default_factory=dict, description="Knobs that differ from the paper's configuration"
    )
    calibrated_knobs: dict[str, Any] = Field(
        default_factory=dict, description="Knobs taken from the bank's calibration"
    )
    filtered_size: int = 0
    routing_scores: dict[str, float | None] = Field(default_factory=dict, description="R")
    candidates: list[Candidate] = Field(default_factory=list)
    switch_n: int = 0
    switch_threshold: float
    mode: Literal["route", "aggregate", "error"] = "route"
    aggregation_method: Literal["llm", "vote", "none"] = "none"
    votable: bool = False
    aggregator: str | None = None
    aggregated: list[str] = Field(default_factory=list, description="Models whose answers merged")
    answer_source: str | None = Field(
        default=None, description="The model whose answer is returned, or the aggregator's name"
    )
    fallback: str | None = Field(default=None, description="Why the plan changed, if it did")
    calls: list[ModelCall] = Field(default_factory=list)
    failures: dict[str, str] = Field(default_factory=dict)
    unused_bank_models: list[str] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0


def merge_calls(
    left: list[dict[str, Any]] | None, right: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Reducer of `calls`: parallel branches append; None starts a new run's list."""
    if right is None:
        return []
    return [*(left or []), *right]


class InputState(TypedDict, total=False):
    """A query string, or chat messages whose last user turn is routed."""

    query: str
    messages: Annotated[list[AnyMessage], add_messages]


class OutputState(TypedDict, total=False):
    """The answer (also appended to `messages` as an AI message) and the whole decision."""

    answer: str
    messages: Annotated[list[AnyMessage], add_messages]
    decision: dict[str, Any]
    usage: dict[str, int]
    cost_usd: float
    error: str | None


class JisiState(InputState, OutputState, total=False):
    """Internal state passed between the nodes."""

    knobs: dict[str, Any]
    calibrated_knobs: dict[str, Any]
    query_text: str
    query_embedding: list[float]
    support: list[int]
    support_sims: list[float]
    support_scores: list[float | None]
    aggregator_order: list[str]
    aggregator_scores: dict[str, float | None]
    active_models: list[str]
    probes: list[str]
    probing: dict[str, Any]
    support_ranking: list[float | None]
    expected_costs: list[float | None]
    calls: Annotated[list[dict[str, Any]], merge_calls]
    routing: dict[str, Any]
    candidates: list[dict[str, Any]]
    pending: list[str]
    aggregation: dict[str, Any]


class GenerateTask(TypedDict):
    """The private input of one `generate` branch, sent with `Send`."""

    model: str
    role: CallRole
    messages: list[AnyMessage]
