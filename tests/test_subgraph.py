"""JiSi inside a user's own LangGraph graph: added directly as a node of a `MessagesState`
graph, or called from a node; run in parallel without cross-talk; in a checkpointed thread that
keeps every turn; and `examples/subgraph.py` run as written.

The JiSi graph is built over the session's real bank with replay models, and each answer is
compared with the same question's answer from a plain single run.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_MODELS
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from live_servers import (
    PROCESS_TIMEOUT_S,
    REPLAY_KEY_ENV,
    REPLAY_KEY_VALUE,
    child_env,
    write_pool,
)

from jisi_graph.bank.loaders import load_rows
from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.replay import replay_pool
from jisi_graph.resources import Resources

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "subgraph.py"
QUESTIONS = 4


@pytest.fixture(scope="module")
def rows(data_file: Path) -> list[BankRow]:
    return load_rows(data_file, split="test", models=list(REAL_MODELS), limit=QUESTIONS)


@pytest.fixture(scope="module")
def jisi(real_bank: Bank, embedder: Embedder, rows: list[BankRow]) -> CompiledStateGraph:
    return build_graph(Resources(real_bank, embedder, replay_pool(rows, REAL_MODELS)))


@pytest.fixture(scope="module")
def single(jisi: CompiledStateGraph, rows: list[BankRow]) -> dict[str, str]:
    """Each question's answer from a single run of its own, by question."""
    answers = {row.query: jisi.invoke({"query": row.query})["answer"] for row in rows}
    assert len(set(answers.values())) == QUESTIONS  # distinct, so cross-talk would show
    return answers


def chat_graph(node: Any, checkpointer: InMemorySaver | None = None) -> CompiledStateGraph:
    builder = StateGraph(MessagesState)
    builder.add_node("jisi", node)
    builder.add_edge(START, "jisi")
    builder.add_edge("jisi", END)
    return builder.compile(checkpointer=checkpointer)


# ------------------------------------------------------------------------------------------
# As a node, or called from a node
# ------------------------------------------------------------------------------------------


def test_compiled_graph_added_directly_as_a_node(
    jisi: CompiledStateGraph, single: dict[str, str]
) -> None:
    parent = chat_graph(jisi)
    question = next(iter(single))
    out = parent.invoke({"messages": [HumanMessage(question)]})
    # the parent's state is its own: the conversation, with JiSi's answer appended
    assert set(out) == {"messages"}
    human, ai = out["messages"]
    assert isinstance(human, HumanMessage) and human.content == question
    assert isinstance(ai, AIMessage) and ai.content == single[question]
    assert ai.name == "jisi"


def test_parent_keys_named_like_jisi_outputs_receive_them(
    jisi: CompiledStateGraph, single: dict[str, str]
) -> None:
    class Routed(MessagesState):
        answer: str
        decision: dict[str, Any]
        cost_usd: float

    builder = StateGraph(Routed)
    builder.add_node("jisi", jisi)
    builder.add_edge(START, "jisi")
    parent = builder.compile()
    question = list(single)[1]
    out = parent.invoke({"messages": [SystemMessage("be exact"), HumanMessage(question)]})
    assert out["answer"] == single[question] == out["messages"][-1].content
    assert out["decision"]["query"] == question
    assert out["decision"]["mode"] in ("route", "aggregate")
    assert out["cost_usd"] == out["decision"]["cost_usd"] > 0
    assert [m.type for m in out["messages"]] == ["system", "human", "ai"]


def test_called_from_a_node(jisi: CompiledStateGraph, single: dict[str, str]) -> None:
    seen: list[dict[str, Any]] = []

    def ask_jisi(state: MessagesState) -> dict[str, Any]:
        result = jisi.invoke({"query": state["messages"][-1].text})
        seen.append(result["decision"])
        return {"messages": [AIMessage(result["answer"], name="jisi")]}

    parent = chat_graph(ask_jisi)
    question = list(single)[2]
    out = parent.invoke({"messages": [HumanMessage(question)]})
    assert [m.type for m in out["messages"]] == ["human", "ai"]
    assert out["messages"][-1].content == single[question]
    (decision,) = seen
    assert decision["query"] == question


def test_parent_stream_carries_the_aggregators_tokens(
    jisi: CompiledStateGraph, single: dict[str, str]
) -> None:
    parent = chat_graph(jisi)
    question = next(iter(single))
    items = list(
        parent.stream(
            {"messages": [HumanMessage(question)]}, stream_mode="messages", subgraphs=True
        )
    )
    assert items
    chunks = [message for _namespace, (message, _meta) in items]
    assert all(isinstance(message, AIMessageChunk) for message in chunks)
    assert all(namespace[0].startswith("jisi:") for namespace, _ in items)
    assert "".join(message.text for message in chunks) == single[question]


# ------------------------------------------------------------------------------------------
# Parallel runs: no cross-talk
# ------------------------------------------------------------------------------------------


def test_batch_of_different_questions(jisi: CompiledStateGraph, single: dict[str, str]) -> None:
    questions = list(single)
    outs = jisi.batch([{"query": q} for q in questions], config={"max_concurrency": QUESTIONS})
    assert [out["answer"] for out in outs] == [single[q] for q in questions]
    assert [out["decision"]["query"] for out in outs] == questions
    for out, question in zip(outs, questions, strict=True):
        assert out["messages"][0].content == question
        assert len(out["messages"]) == 2


def test_parent_graphs_in_threads(jisi: CompiledStateGraph, single: dict[str, str]) -> None:
    parent = chat_graph(jisi, InMemorySaver())
    questions = list(single) * 2

    def ask(job: tuple[int, str]) -> tuple[str, list[Any]]:
        index, question = job
        config = {"configurable": {"thread_id": f"parallel-{index}"}}
        out = parent.invoke({"messages": [HumanMessage(question)]}, config)
        return question, out["messages"]

    with ThreadPoolExecutor(max_workers=QUESTIONS) as pool:
        results = list(pool.map(ask, enumerate(questions)))
    for question, messages in results:
        assert [m.type for m in messages] == ["human", "ai"]
        assert messages[0].content == question
        assert messages[1].content == single[question]


# ------------------------------------------------------------------------------------------
# A checkpointed conversation
# ------------------------------------------------------------------------------------------


def test_checkpointed_thread_keeps_both_turns(
    jisi: CompiledStateGraph, single: dict[str, str]
) -> None:
    parent = chat_graph(jisi, InMemorySaver())
    first, second = list(single)[:2]
    config = {"configurable": {"thread_id": "conversation"}}
    parent.invoke({"messages": [HumanMessage(first)]}, config)
    out = parent.invoke({"messages": [HumanMessage(second)]}, config)
    # the second turn is answered on its own question, after the first turn's pair
    assert [(m.type, m.content) for m in out["messages"]] == [
        ("human", first),
        ("ai", single[first]),
        ("human", second),
        ("ai", single[second]),
    ]
    saved = parent.get_state(config).values["messages"]
    assert [m.id for m in saved] == [m.id for m in out["messages"]]
    assert len({m.id for m in saved}) == 4
    # another thread starts afresh
    other = parent.invoke(
        {"messages": [HumanMessage(second)]}, {"configurable": {"thread_id": "other"}}
    )
    assert [m.content for m in other["messages"]] == [second, single[second]]


# ------------------------------------------------------------------------------------------
# The example, as written, against the replay server
# ------------------------------------------------------------------------------------------


def test_example_subgraph_runs_as_written(
    replay_endpoint: str,
    real_bank_dir: Path,
    single: dict[str, str],
    tmp_path: Path,
) -> None:
    pool = write_pool(tmp_path / "pool.yaml", replay_endpoint, REAL_MODELS)
    first, second = list(single)[:2]
    done = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--bank",
            str(real_bank_dir),
            "--pool",
            str(pool),
            first,
            second,
        ],
        capture_output=True,
        text=True,
        env=child_env(**{REPLAY_KEY_ENV: REPLAY_KEY_VALUE}),
        timeout=PROCESS_TIMEOUT_S,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"Q: {first}\nA: {single[first]}\n\n"
        f"Q: {second}\nA: {single[second]}\n\n"
        "4 messages in the conversation\n"
    )
