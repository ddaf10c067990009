"""The package's public names load lazily and are the real objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jisi_graph


def test_public_names_are_the_real_classes() -> None:
    from jisi_graph.bank.store import Bank
    from jisi_graph.context import JisiContext
    from jisi_graph.graph import build_graph
    from jisi_graph.pool import Pool

    assert jisi_graph.Bank is Bank
    assert jisi_graph.Pool is Pool
    assert jisi_graph.JisiContext is JisiContext
    assert jisi_graph.build_graph is build_graph


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = jisi_graph.nope


def test_importing_the_package_loads_no_graph_and_no_model() -> None:
    code = (
        "import sys, jisi_graph; "
        "print(sorted(m for m in ('langgraph', 'torch', 'langchain_openai', 'jisi_graph.graph') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
