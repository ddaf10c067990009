"""The graph as LangGraph Studio serves it: `langgraph dev` over the repo's `langgraph.json`.

Two subprocesses on loopback: `jisi replay-serve` answers as each recorded model of the shared
ZeroEval test rows, and `langgraph dev` serves the graph with JISI_BANK (the session's real bank)
and JISI_POOL (a pool file pointing at the replay server). The tests talk to the server through
`langgraph_sdk` only, and compare what it answers with the in-process graph over the same bank
and replay models.

`langgraph dev` keeps its state in `.langgraph_api/` under its working directory, so it runs in
a temporary directory, on a copy of `langgraph.json` whose graph path is made absolute.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_MODELS

from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.context import JisiContext
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.replay import replay_pool
from jisi_graph.resources import Resources
from jisi_graph.state import Decision

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
GRAPH_ID = "jisi"
START_DEADLINE_S = 180.0
RUN_TIMEOUT_S = 300.0
OFFLINE_ENV = {
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
DROPPED_ENV = ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT")


# ------------------------------------------------------------------------------------------
# Subprocesses
# ------------------------------------------------------------------------------------------


def langgraph_cli() -> str:
    """The `langgraph` command of this environment, or a skip saying it is not installed."""
    found = shutil.which("langgraph", path=str(Path(sys.executable).parent)) or shutil.which(
        "langgraph"
    )
    if found is None:
        pytest.skip("the langgraph CLI is not installed (pip install 'langgraph-cli[inmem]')")
    try:
        import langgraph_api  # noqa: F401
    except ImportError:
        pytest.skip("langgraph dev needs the in-memory server: pip install 'langgraph-cli[inmem]'")
    return found


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open while choosing, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


@dataclass
class Server:
    """A subprocess serving HTTP on loopback, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str

    def log_tail(self, chars: int = 4000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} log (tail) ---\n{text[-chars:]}"

    def wait_ready(self, path: str, deadline_s: float) -> None:
        """Poll `url + path` until it answers 200; fail with the log if the process dies."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"{self.name} exited with code {self.process.returncode}\n{self.log_tail()}"
                )
            self.refresh_url()
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        pytest.fail(f"{self.name} not ready after {deadline_s:.0f} s\n{self.log_tail()}")

    def refresh_url(self) -> None:
        """`langgraph dev` moves to another port when ours was taken meanwhile: follow it."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        moved = re.search(r"already in use, using port (\d+) instead", text)
        if moved:
            self.url = f"http://127.0.0.1:{moved.group(1)}"

    def stop(self) -> None:
        """Stop the subprocess and its children (its own process group), then reap it."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start(name: str, command: list[str], cwd: Path, env: dict[str, str], url: str) -> Server:
    log = cwd / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(name=name, process=process, log=log, url=url)


def offline_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in DROPPED_ENV}
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env


def served_config(workdir: Path) -> Path:
    """A copy of the repo's langgraph.json with the graph paths made absolute."""
    config = json.loads((REPO / "langgraph.json").read_text(encoding="utf-8"))
    assert GRAPH_ID in config["graphs"]
    graphs = {}
    for graph_id, spec in config["graphs"].items():
        path, sep, variable = spec.partition(":")
        file = (REPO / path).resolve()
        assert file.is_file(), f"langgraph.json names {path}, which does not exist"
        graphs[graph_id] = f"{file}{sep}{variable}"
    config["graphs"] = graphs
    config["dependencies"] = [str(REPO)]
    target = workdir / "langgraph.json"
    target.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return target


@dataclass
class Studio:
    """The running servers and what the tests need to reach them."""

    url: str
    workdir: Path
    langgraph: Server
    replay: Server


@pytest.fixture(scope="module")
def studio(
    tmp_path_factory: pytest.TempPathFactory, real_bank_dir: Path, data_file: Path
) -> Iterator[Studio]:
    command = langgraph_cli()
    pytest.importorskip("langgraph_sdk")
    workdir = tmp_path_factory.mktemp("studio")
    servers: list[Server] = []
    try:
        replay_port, port = free_ports(2)
        replay = start(
            "replay-serve",
            [
                sys.executable,
                "-m",
                "jisi_graph",
                "replay-serve",
                "--data",
                str(data_file),
                "--split",
                "test",
                "--host",
                "127.0.0.1",
                "--port",
                str(replay_port),
            ],
            workdir,
            offline_env(),
            f"http://127.0.0.1:{replay_port}",
        )
        servers.append(replay)
        pool = workdir / "pool.yaml"
        pool.write_text(
            "defaults:\n"
            f"  base_url: http://127.0.0.1:{replay_port}/v1\n"
            "models:\n" + "".join(f"  - name: {name}\n" for name in REAL_MODELS),
            encoding="utf-8",
        )
        langgraph = start(
            "langgraph-dev",
            [
                command,
                "dev",
                "--no-browser",
                "--no-reload",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--config",
                str(served_config(workdir)),
            ],
            workdir,
            offline_env(JISI_BANK=str(real_bank_dir), JISI_POOL=str(pool)),
            f"http://127.0.0.1:{port}",
        )
        servers.append(langgraph)
        replay.wait_ready("/v1/models", START_DEADLINE_S)
        langgraph.wait_ready("/ok", START_DEADLINE_S)
        yield Studio(url=langgraph.url, workdir=workdir, langgraph=langgraph, replay=replay)
    finally:
        for server in reversed(servers):
            server.stop()


# ------------------------------------------------------------------------------------------
# The client, the assistant, and the in-process graph to compare with
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(studio: Studio) -> Any:
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=studio.url, timeout=RUN_TIMEOUT_S)


@pytest.fixture(scope="module")
def assistant_id(client: Any) -> str:
    assistants = client.assistants.search(graph_id=GRAPH_ID)
    assert len(assistants) == 1
    assert assistants[0]["graph_id"] == GRAPH_ID
    return assistants[0]["assistant_id"]


@pytest.fixture(scope="module")
def local_graph(real_bank: Bank, embedder: Embedder, real_test_rows: list[BankRow]) -> Any:
    """The graph in this process, over the same bank, with replay models of the same rows."""
    return build_graph(Resources(real_bank, embedder, replay_pool(real_test_rows, REAL_MODELS)))


def run_remote(
    client: Any, studio: Studio, assistant_id: str, query: str, **context: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run on a fresh thread, waited for: (its output, the run record)."""
    thread = client.threads.create()
    try:
        output = client.runs.wait(
            thread["thread_id"],
            assistant_id,
            input={"query": query},
            context=context or None,
        )
    except Exception as error:  # the server's log says why; show it
        pytest.fail(f"run failed: {error!r}\n{studio.langgraph.log_tail()}")
    runs = client.runs.list(thread["thread_id"])
    assert len(runs) == 1
    assert isinstance(output, dict), output
    assert "__error__" not in output, f"{output}\n{studio.langgraph.log_tail()}"
    return output, runs[0]


def assert_same_decision(remote: dict[str, Any], local: dict[str, Any]) -> None:
    """The served graph decided as the in-process one (costs aside: replay over HTTP has no
    recorded cost, so the pool's prices, all zero here, price the calls)."""
    assert remote["error"] is None and local["error"] is None
    assert remote["answer"] == local["answer"]
    served, here = (
        Decision.model_validate(remote["decision"]),
        Decision.model_validate(local["decision"]),
    )
    for name in (
        "query",
        "support_size",
        "probes",
        "filtered_size",
        "switch_n",
        "switch_threshold",
        "mode",
        "aggregation_method",
        "aggregator",
        "aggregated",
        "answer_source",
        "fallback",
    ):
        assert getattr(served, name) == getattr(here, name), name
    assert [n.id for n in served.neighbours] == [n.id for n in here.neighbours]
    for remote_score, local_score in (
        (served.support_scores, here.support_scores),
        (served.routing_scores, here.routing_scores),
        (served.aggregator_scores, here.aggregator_scores),
    ):
        assert remote_score.keys() == local_score.keys()
        for model, value in remote_score.items():
            assert value == pytest.approx(local_score[model], abs=1e-5), model
    assert [(c.model, c.answered, c.answer) for c in served.candidates] == [
        (c.model, c.answered, c.answer) for c in here.candidates
    ]
    for a, b in zip(served.candidates, here.candidates, strict=True):
        assert a.routing_score == pytest.approx(b.routing_score, abs=1e-5)
        assert a.relative_score == pytest.approx(b.relative_score, abs=1e-5)
    assert sorted((c.model, c.role, c.ok) for c in served.calls) == sorted(
        (c.model, c.role, c.ok) for c in here.calls
    )
    assert all(c.cost_source == "prices" and c.cost_usd == 0.0 for c in served.calls)
    assert remote["cost_usd"] == 0.0


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_assistant_schema_shows_every_knob_with_its_description(
    client: Any, assistant_id: str
) -> None:
    schemas = client.assistants.get_schemas(assistant_id)
    assert schemas["graph_id"] == GRAPH_ID
    context = schemas["context_schema"]
    properties = context["properties"]
    assert set(properties) == set(JisiContext.model_fields)
    for name, field in JisiContext.model_fields.items():
        assert properties[name]["description"] == field.description, name
    threshold = properties["switch_threshold"]
    assert threshold["default"] == 0.8
    assert threshold["description"].startswith("Candidates whose routing score is >= t")
    assert threshold["maximum"] == 1 and threshold["exclusiveMinimum"] == 0
    assert properties["aggregation"]["enum"] == ["llm", "vote", "vote_or_llm"]
    assert "JISI_BANK" in properties["bank"]["description"]
    assert {"query", "messages"} <= set(schemas["input_schema"]["properties"])
    assert {"answer", "decision", "cost_usd"} <= set(schemas["output_schema"]["properties"])


def test_run_answers_as_the_in_process_graph(
    client: Any,
    studio: Studio,
    assistant_id: str,
    local_graph: Any,
    real_test_rows: list[BankRow],
) -> None:
    row = real_test_rows[0]
    remote, run = run_remote(client, studio, assistant_id, row.query)
    assert run["status"] == "success"
    local = local_graph.invoke({"query": row.query})
    assert_same_decision(remote, local)

    decision = Decision.model_validate(remote["decision"])
    assert decision.query == row.query
    assert decision.switch_threshold == 0.8
    assert sorted(decision.probes) == sorted(REAL_MODELS)
    assert decision.mode in ("route", "aggregate")
    assert 1 <= len(decision.candidates) <= 3
    for candidate in decision.candidates:
        assert candidate.answered and candidate.answer == row.raw_output[candidate.model]
    if decision.mode == "route":
        assert remote["answer"] == row.raw_output[decision.candidates[0].model]
    else:  # the aggregator, a replay model too, answers with its recorded answer
        assert remote["answer"] == row.raw_output[decision.aggregator]
    # The answer is also the last message of the thread's state.
    state = client.threads.get_state(run["thread_id"])
    assert state["values"]["answer"] == remote["answer"]
    assert state["values"]["messages"][-1]["type"] == "ai"
    assert state["values"]["messages"][-1]["content"] == remote["answer"]


def test_run_context_sets_the_switch_threshold(
    client: Any,
    studio: Studio,
    assistant_id: str,
    local_graph: Any,
    real_test_rows: list[BankRow],
) -> None:
    # A question whose decision the threshold changes: at 0.5 more candidates clear it than at
    # the default 0.8 (chosen with the in-process graph, so the test does not hard-code one).
    threshold = 0.5
    chosen = None
    for row in real_test_rows:
        default = local_graph.invoke({"query": row.query})["decision"]
        lowered = local_graph.invoke({"query": row.query}, context={"switch_threshold": threshold})
        if lowered["decision"]["switch_n"] != default["switch_n"]:
            chosen = (row, default, lowered)
            break
    if chosen is None:
        pytest.fail("no test row whose decision changes between thresholds 0.8 and 0.5")
    row, default, lowered = chosen

    remote, run = run_remote(client, studio, assistant_id, row.query, switch_threshold=threshold)
    assert run["status"] == "success"
    assert_same_decision(remote, lowered)
    decision = Decision.model_validate(remote["decision"])
    assert decision.switch_threshold == threshold
    relative = [c.relative_score for c in decision.candidates]
    assert decision.switch_n == sum(r >= threshold for r in relative)
    assert decision.switch_n > default["switch_n"]
    assert decision.mode == "aggregate"
    assert decision.aggregated == [c.model for c in decision.candidates][: decision.switch_n]

    # The same question without a context runs at the default threshold on the same server.
    plain, _ = run_remote(client, studio, assistant_id, row.query)
    assert plain["decision"]["switch_threshold"] == 0.8
    assert plain["decision"]["switch_n"] == default["switch_n"]


def test_invalid_context_value_fails_the_run(
    client: Any, studio: Studio, assistant_id: str, real_test_rows: list[BankRow]
) -> None:
    thread = client.threads.create()
    with pytest.raises(Exception) as raised:
        client.runs.wait(
            thread["thread_id"],
            assistant_id,
            input={"query": real_test_rows[0].query},
            context={"switch_threshold": 1.5},
            raise_error=True,
        )
    message = str(raised.value)
    assert "ValidationError" in message
    assert "switch_threshold" in message and "less than or equal to 1" in message


def test_server_state_stays_in_its_working_directory(studio: Studio) -> None:
    assert (studio.workdir / ".langgraph_api").is_dir()
