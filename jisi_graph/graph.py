"""The JiSi graph: wiring only. The module-level `graph` is what LangGraph Studio serves.

embed -> retrieve -> score_aggregators -(probes, in parallel)-> generate -> route
route -(candidates that were not probes, in parallel)-> generate -> route
route -(switch)-> aggregate -> finalize   |   route -(switch)-> finalize
score_aggregators -(a clear leader by probe_margin)-> generate (it alone) | -(no model)-> finalize
"""

from __future__ import annotations

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from jisi_graph.context import JisiContext
from jisi_graph.nodes.aggregate import make_aggregate
from jisi_graph.nodes.embed import make_embed
from jisi_graph.nodes.finalize import make_finalize
from jisi_graph.nodes.generate import make_generate
from jisi_graph.nodes.retrieve import make_retrieve
from jisi_graph.nodes.route import make_route
from jisi_graph.nodes.score_aggregators import make_score_aggregators
from jisi_graph.nodes.switch import after_route, dispatch_probes
from jisi_graph.resources import CachedLoader, ResourceProvider, Resources, fixed
from jisi_graph.state import InputState, JisiState, OutputState


def build_graph(
    resources: Resources | None = None,
    *,
    provider: ResourceProvider | None = None,
    name: str = "jisi",
) -> CompiledStateGraph:
    """Compile the JiSi graph over fixed `resources`, or a `provider` that loads them per run.

    With neither, resources load on first use from the context's `bank` and `pool` (or the
    JISI_BANK and JISI_POOL environment variables).
    """
    if resources is not None:
        provider = fixed(resources)
    elif provider is None:
        provider = CachedLoader()
    builder = StateGraph(
        JisiState,
        context_schema=JisiContext,
        input_schema=InputState,
        output_schema=OutputState,
    )
    builder.add_node("embed", make_embed(provider))
    builder.add_node("retrieve", make_retrieve(provider))
    builder.add_node("score_aggregators", make_score_aggregators(provider))
    builder.add_node("generate", make_generate(provider))
    builder.add_node("route", make_route(provider))
    builder.add_node("aggregate", make_aggregate(provider))
    builder.add_node("finalize", make_finalize(provider))
    builder.add_edge(START, "embed")
    builder.add_edge("embed", "retrieve")
    builder.add_edge("retrieve", "score_aggregators")
    builder.add_conditional_edges("score_aggregators", dispatch_probes, ["generate", "finalize"])
    builder.add_edge("generate", "route")
    builder.add_conditional_edges("route", after_route, ["generate", "aggregate", "finalize"])
    builder.add_edge("aggregate", "finalize")
    builder.add_edge("finalize", END)
    return builder.compile(name=name)


graph = build_graph()
