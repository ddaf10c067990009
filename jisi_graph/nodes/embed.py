"""Node `embed`: read the query (a string or the last user turn) and embed it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from jisi_graph.calibration import apply_calibration
from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import JisiInputError, context_of, emit
from jisi_graph.resources import ResourceProvider
from jisi_graph.state import JisiState
from jisi_graph.text import first_lone_surrogate

MAX_QUERY_CHARS = 200_000
"""The longest query accepted (about 50k tokens): far above any prompt of the shared data (under
3k characters), far below 1 MB; longer texts would only overflow the models' windows."""

FRESH_RUN: dict[str, Any] = {
    "calls": None,
    "routing": {},
    "candidates": [],
    "pending": [],
    "aggregation": {},
    "probes": [],
    "probing": {},
}


def read_query(state: JisiState) -> tuple[str, list[dict[str, str]]]:
    """The text to route and the new messages to add (the user turn of a string query).

    Refused with a `JisiInputError`: no query, an empty or blank one, one longer than
    `MAX_QUERY_CHARS`, messages without a user turn.

    The user turn is returned as a message dict, which `add_messages` makes a HumanMessage:
    LangGraph's "messages" stream re-emits the message objects a node returns, and the
    question must not come back on that stream as if it were the answer.
    """
    query = state.get("query")
    if query is not None:
        if not isinstance(query, str):
            raise JisiInputError(f"the query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise JisiInputError("the query is empty: send a question in 'query' or 'messages'")
        return check_length(query), [{"role": "user", "content": query}]
    messages = state.get("messages") or []
    if not messages:
        raise JisiInputError("no input: give a 'query' string or a list of 'messages'")
    for message in reversed(messages):
        if message.type == "human":
            text = message.text if isinstance(message.content, list) else message.content
            if not isinstance(text, str) or not text.strip():
                raise JisiInputError("the last user message is empty")
            return check_length(text), []
    raise JisiInputError("the messages hold no user turn to answer")


def check_length(query: str) -> str:
    """`query`, or a `JisiInputError` if it is longer than `MAX_QUERY_CHARS` or not valid text."""
    if len(query) > MAX_QUERY_CHARS:
        raise JisiInputError(
            f"the query is {len(query)} characters long; at most {MAX_QUERY_CHARS}"
        )
    at = first_lone_surrogate(query)
    if at is not None:
        raise JisiInputError(
            f"the query is not valid Unicode text: an unpaired surrogate at character {at}"
        )
    return query


def make_embed(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `embed` node bound to a resource provider."""

    def embed(state: JisiState, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Embed the routed text with the bank's embedder; start the run's records afresh."""
        query_text, new_messages = read_query(state)
        context = context_of(runtime)  # the caller's, not a previous run's knobs
        resources = provider(context)
        active = [m for m, on in zip(resources.bank.models, resources.active, strict=True) if on]
        effective, calibrated, _ = apply_calibration(context, resources.calibration, active)
        vector = resources.embedder.embed_one(query_text)
        emit("embedded", chars=len(query_text))
        update: dict[str, Any] = {
            **FRESH_RUN,
            "knobs": effective.model_dump(),
            "calibrated_knobs": calibrated,
            "query": None,
            "query_text": query_text,
            "query_embedding": vector.tolist(),
        }
        if new_messages:
            update["messages"] = new_messages
        return update

    return embed
