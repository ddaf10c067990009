"""Node `generate`: one model answers the query; each call is its own parallel branch (`Send`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langgraph.runtime import Runtime

from jisi_graph.calls import call_model, describe_error
from jisi_graph.context import JisiContext
from jisi_graph.nodes.common import context_of, emit
from jisi_graph.resources import ResourceProvider
from jisi_graph.state import GenerateTask, ModelCall


def make_generate(provider: ResourceProvider) -> Callable[..., dict[str, Any]]:
    """The `generate` node bound to a resource provider."""

    def generate(task: GenerateTask, runtime: Runtime[JisiContext]) -> dict[str, Any]:
        """Ask one model (a probe or a candidate); a failure comes back as a record."""
        context = context_of(runtime)
        pool = provider(context).pool
        name, role = task["model"], task["role"]
        spec = pool.model_spec(name)
        emit("model_called", model=name, role=role)
        try:
            chat_model = pool.chat_model(name)
        except Exception as error:  # noqa: BLE001 - a model that cannot be made is a failure
            kind, message, _ = describe_error(error)
            record = ModelCall(
                model=name,
                role=role,
                ok=False,
                error=message,
                error_kind=kind,
                attempts=0,
                cost_source="none",
            )
        else:
            record = call_model(
                chat_model,
                spec,
                task["messages"],
                role=role,
                timeout_s=context.timeout_s,
                max_retries=context.max_retries,
            )
        if record.ok:
            emit(
                "model_answered",
                model=name,
                role=role,
                output_tokens=record.output_tokens,
                latency_s=record.latency_s,
            )
        else:
            emit("model_failed", model=name, role=role, error=record.error)
        return {"calls": [record.model_dump()]}

    return generate
