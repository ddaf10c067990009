"""JiSi as a LangGraph state machine: route and aggregate a pool of LLMs with an embedding bank.

The public names load on first use, so `import jisi_graph` stays cheap:

    from jisi_graph import build_graph, Bank, Pool, JisiContext
    from jisi_graph.graph import graph      # the compiled graph that Studio serves

The compiled graph is not re-exported here: its module is also named `graph`, and Python binds a
package's submodule to the package attribute of the same name once it is imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jisi_graph.bank.store import Bank
    from jisi_graph.context import JisiContext
    from jisi_graph.graph import build_graph
    from jisi_graph.pool import Pool

__all__ = ["Bank", "JisiContext", "Pool", "build_graph"]

_HOMES = {
    "Bank": "jisi_graph.bank.store",
    "JisiContext": "jisi_graph.context",
    "Pool": "jisi_graph.pool",
    "build_graph": "jisi_graph.graph",
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module when it is first asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'jisi_graph' has no attribute {name!r}")
    return getattr(import_module(home), name)
