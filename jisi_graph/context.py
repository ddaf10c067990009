"""Every knob of the JiSi method, with its default and a one-line description.

`JisiContext` is the graph's `context_schema`: LangGraph Studio shows these descriptions, a
caller overrides any field per run (`graph.invoke(..., context={...})`), and the pure functions
of `routing.py` take their defaults from here, so each default lives in exactly one place.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

AggregationMode = Literal["llm", "vote", "vote_or_llm"]
CandidateSource = Literal["mixed", "support"]

BANK_ENV = "JISI_BANK"
POOL_ENV = "JISI_POOL"


class JisiContext(BaseModel):
    """Run-time configuration of one JiSi query (METHOD.md, defaults of the paper's config)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`top_k=true` is a mistake, not 1: a true/false value only sets a true/false knob."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation is not bool and bool not in get_args(annotation):
                raise PydanticCustomError(
                    "bool_for_number",
                    "takes a number or a name, not {value}",
                    {"value": str(value).lower()},
                )
        return value

    bank: str | None = Field(
        default=None,
        description=f"Directory of a built bank; when unset, the {BANK_ENV} environment variable.",
    )
    pool: str | None = Field(
        default=None,
        description=f"Pool file (YAML); when unset, the {POOL_ENV} environment variable.",
    )
    support_k: int = Field(
        default=50,
        ge=1,
        description="Minimum size k of the support set: the k nearest bank queries, plus ties.",
    )
    rag_thres: float = Field(
        default=0.95,
        gt=0,
        le=1,
        description="Support set keeps bank queries with similarity >= rag_thres x the k-th one.",
    )
    aggregator_beta: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Aggregator score = beta x bank-wide ability + (1 - beta) x support-set score.",
    )
    sample_n: int = Field(
        default=3,
        ge=1,
        description="Number of probes: the top models by support-set score that answer first.",
    )
    length_order: float = Field(
        default=2.0,
        gt=0,
        description="Order p of the length (difficulty) distance |L_past^p - L_now^p|.",
    )
    length_coef: float = Field(
        default=0.4,
        ge=0,
        le=1,
        description="Weight of length similarity against response similarity.",
    )
    query_coef: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Weight of query similarity in the mixed similarity (1 - it: responses).",
    )
    subset_p: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of the support set kept, by mixed similarity, to score the routing.",
    )
    top_k: int = Field(
        default=3,
        ge=1,
        description="Number K of candidates ranked by routing score that the switch considers.",
    )
    max_candidate_rounds: int = Field(
        default=2,
        ge=1,
        description="Rounds of calls to non-probe candidates (failed ones are replaced).",
    )
    switch_threshold: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Candidates whose routing score is >= t x the best one are aggregated.",
    )
    cut_length: int = Field(
        default=13000,
        ge=1,
        description="If three or more answers hold more tokens than this, aggregate fewer.",
    )
    aggregation: AggregationMode = Field(
        default="llm",
        description=(
            "llm: the aggregator model writes the answer; vote: vote over extracted answers "
            "where the support set is votable, else route; vote_or_llm: vote where votable, "
            "else the aggregator model."
        ),
    )
    max_aggregators: int = Field(
        default=3,
        ge=1,
        description="Aggregators tried in order of A before falling back to routing.",
    )
    aggregator_temperature: float = Field(
        default=0.7, ge=0, le=2, description="Sampling temperature of the aggregation call."
    )
    show_confidence: bool = Field(
        default=False,
        description="Show each answer's routing score to the aggregator as a confidence.",
    )
    vote_majority: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="A query is votable when more than this fraction of its support set is.",
    )
    cost_weight: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description=(
            "Cost term (ours, off at 0): scores become (1 - w) x quality + w x (1 - cost), both "
            "min-max normalised over the pool, cost = expected cost on the support set; folds "
            "into the support-set scores P (and so the probes) and the routing scores R. "
            "0: quality only (the paper), 1: cost only."
        ),
    )
    probe_margin: float | None = Field(
        default=None,
        ge=0,
        description=(
            "Adaptive probing (ours, off when unset): when the top model by support-set score "
            "leads the second by at least this margin, route to it without probes (one call). "
            "0 always routes by the support set alone (query-kNN)."
        ),
    )
    candidate_source: CandidateSource = Field(
        default="mixed",
        description=(
            "Which ranking gives the top_k candidates: mixed: the routing scores R of "
            "query-response mixed routing (the paper); support: the support-set scores P, "
            "asking the top_k models by P at once (no response similarity is needed; with "
            "stop_on_agreement, the top sample_n first)."
        ),
    )
    stop_on_agreement: bool = Field(
        default=False,
        description=(
            "Early stop (ours, off by default): on a votable query, when two or more probes "
            "answer and all give the same final answer, return it without asking further "
            "candidates. With candidate_source=support the top sample_n models are asked first."
        ),
    )
    calibrated: bool = Field(
        default=True,
        description=(
            "Use the knobs `jisi calibrate` stored with the bank for every knob this context "
            "does not set; false: the paper's configuration (every unset knob at its default)."
        ),
    )
    neighbours_shown: int = Field(
        default=5, ge=0, description="Number of nearest bank queries listed in the decision."
    )
    timeout_s: float = Field(
        default=120.0, gt=0, description="Timeout of one model call attempt, in seconds."
    )
    max_retries: int = Field(
        default=2, ge=0, description="Retries of a failed model call before it is a failure."
    )

    def bank_path(self) -> str | None:
        """The bank directory: the field, else the environment variable, else None."""
        return self.bank or os.environ.get(BANK_ENV) or None

    def pool_path(self) -> str | None:
        """The pool file: the field, else the environment variable, else None."""
        return self.pool or os.environ.get(POOL_ENV) or None


DEFAULTS = JisiContext()
"""The paper's configuration: every knob at its default."""


def knob_value(raw: str) -> Any:
    """A knob's value given as text (`--set`), which JisiContext then validates.

    JSON when it parses (numbers, true/false, null), else the string itself.
    """
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw
