"""JiSi as one node of your own LangGraph graph, with a memory of the conversation.

    python examples/subgraph.py --bank banks/mine --pool pool.yaml "A question?" "Another one?"

The compiled JiSi graph is added as a node of a graph whose state is `MessagesState`: it answers
the conversation's last user message and appends its answer as an AI message. The bank and the
pool are given per run as context; the checkpointer keeps each thread's conversation. When no
model answers, JiSi adds no message and says why in `error`, a key the chat state shares.
"""

from __future__ import annotations

import argparse

from langchain_core.messages import HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from jisi_graph.graph import graph as jisi


class ChatState(MessagesState):
    """The conversation, and why JiSi could not answer the last turn (None when it did)."""

    error: str | None


def build_chat() -> CompiledStateGraph:
    """A one-node chat graph whose node is JiSi, remembering each thread."""
    builder = StateGraph(ChatState)
    builder.add_node("jisi", jisi)
    builder.add_edge(START, "jisi")
    builder.add_edge("jisi", END)
    return builder.compile(checkpointer=InMemorySaver())


def main() -> None:
    """Ask each question in turn, in one conversation, and print the answers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", required=True, help="A bank directory (jisi bank build)")
    parser.add_argument("--pool", required=True, help="A pool file (YAML)")
    parser.add_argument("questions", nargs="+", help="Questions, asked in this order")
    args = parser.parse_args()

    chat = build_chat()
    config = {"configurable": {"thread_id": "example"}}
    context = {"bank": args.bank, "pool": args.pool}
    for question in args.questions:
        state = chat.invoke({"messages": [HumanMessage(question)]}, config, context=context)
        if state.get("error"):
            print(f"Q: {question}\nno answer: {state['error']}\n")
        else:
            print(f"Q: {question}\nA: {state['messages'][-1].content}\n")
    print(f"{len(state['messages'])} messages in the conversation")


if __name__ == "__main__":
    main()
