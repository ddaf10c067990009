"""JiSi as a LangGraph state machine: route and aggregate a pool of LLMs with an embedding bank."""
