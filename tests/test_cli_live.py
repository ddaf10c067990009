"""`jisi ask` (and `jisi serve`'s start-up checks) as real processes.

`jisi ask` runs against the session's replay server with the session's real bank, and what it
prints is compared with the graph run in this process on the same question. Refusals (a key
variable not set, a bad `--set`) must be one clear line, exit code 2, no traceback, and must
never print a key's value.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REAL_MODELS
from live_servers import (
    PROCESS_TIMEOUT_S,
    REPLAY_KEY_ENV,
    REPLAY_KEY_VALUE,
    REPLAY_PRICES,
    child_env,
    jisi,
    priced_cost,
    write_pool,
)
from typer.testing import CliRunner

from jisi_graph.bank.schema import BankRow
from jisi_graph.bank.store import Bank
from jisi_graph.cli import app
from jisi_graph.embedding import Embedder
from jisi_graph.graph import build_graph
from jisi_graph.replay import replay_pool
from jisi_graph.resources import Resources
from jisi_graph.state import Decision

RESULT_KEYS = {"answer", "decision", "usage", "cost_usd", "error"}
DECISION_KEYS = set(Decision.model_fields)


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        jisi(*args),
        capture_output=True,
        text=True,
        env=child_env(**env),
        timeout=PROCESS_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def local(
    real_bank: Bank, embedder: Embedder, real_test_rows: list[BankRow]
) -> Any:  # the in-process graph over the same bank and rows
    return build_graph(Resources(real_bank, embedder, replay_pool(real_test_rows, REAL_MODELS)))


@pytest.fixture(scope="module")
def pool_file(replay_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cli-pool")
    return write_pool(directory / "pool.yaml", replay_endpoint, REAL_MODELS)


# ------------------------------------------------------------------------------------------
# Asking, against the replay server
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asked(
    pool_file: Path, real_bank_dir: Path, real_test_rows: list[BankRow]
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Two `jisi ask` processes, run at once (each loads the embedder): plain, and --json."""
    common = ["--bank", str(real_bank_dir), "--pool", str(pool_file)]
    argvs = {
        "plain": jisi("ask", real_test_rows[0].query, *common),
        "json": jisi(
            "ask",
            real_test_rows[1].query,
            *common,
            "--json",
            "--set",
            "top_k=2",
            "--set",
            "neighbours_shown=3",
        ),
    }
    env = child_env(**{REPLAY_KEY_ENV: REPLAY_KEY_VALUE})
    processes = {
        name: subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for name, argv in argvs.items()
    }
    done = {}
    try:
        for name, process in processes.items():
            stdout, stderr = process.communicate(timeout=PROCESS_TIMEOUT_S)
            done[name] = subprocess.CompletedProcess(
                argvs[name], process.returncode, stdout, stderr
            )
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return done


@pytest.mark.slow
def test_ask_prints_the_answer(
    local: Any, asked: dict[str, subprocess.CompletedProcess[str]], real_test_rows: list[BankRow]
) -> None:
    expected = local.invoke({"query": real_test_rows[0].query})
    done = asked["plain"]
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected["answer"] + "\n"
    decision = expected["decision"]
    cost = priced_cost(decision["calls"], REPLAY_PRICES)
    summary = (
        f"[{decision['mode']} via {decision['answer_source']}; "
        f"{decision['usage']['calls']} calls; ${cost:.6f}]"
    )
    assert summary in done.stderr
    assert "Traceback" not in done.stderr
    assert REPLAY_KEY_VALUE not in done.stdout + done.stderr


@pytest.mark.slow
def test_ask_json_prints_the_decision_with_set_knobs(
    local: Any, asked: dict[str, subprocess.CompletedProcess[str]], real_test_rows: list[BankRow]
) -> None:
    question = real_test_rows[1].query
    expected = local.invoke({"query": question}, context={"top_k": 2})
    done = asked["json"]
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == RESULT_KEYS
    assert result["error"] is None
    assert result["answer"] == expected["answer"]
    decision = result["decision"]
    assert set(decision) == DECISION_KEYS
    # the knobs took effect: two candidates, three neighbours shown
    assert len(decision["candidates"]) == 2
    assert len(decision["neighbours"]) == 3
    assert decision["knobs"] == {"top_k": 2, "neighbours_shown": 3}
    local_decision = expected["decision"]
    for key in ("mode", "answer_source", "aggregator", "probes", "switch_n", "aggregated"):
        assert decision[key] == local_decision[key], key
    assert [c["model"] for c in decision["candidates"]] == [
        c["model"] for c in local_decision["candidates"]
    ]
    assert decision["query"] == question
    assert result["usage"] == decision["usage"] == expected["usage"]
    assert result["cost_usd"] == pytest.approx(
        priced_cost(local_decision["calls"], REPLAY_PRICES), abs=1e-9
    )
    assert all(call["cost_source"] == "prices" for call in decision["calls"])


# ------------------------------------------------------------------------------------------
# Refusals
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("command", ["ask", "serve"])
def test_missing_key_variable_is_named_never_a_value(
    command: str, real_bank_dir: Path, tmp_path: Path
) -> None:
    present, absent = "JISI_TEST_PRESENT_KEY", "JISI_TEST_ABSENT_KEY"
    secret = "sk-live-do-not-print-4242"
    pool = tmp_path / "pool.yaml"
    pool.write_text(
        "defaults:\n"
        "  base_url: http://127.0.0.1:9/v1\n"
        "models:\n"
        f"  - {{name: {REAL_MODELS[0]}, api_key_env: {present}}}\n"
        f"  - {{name: {REAL_MODELS[1]}, api_key_env: {absent}}}\n",
        encoding="utf-8",
    )
    args = [command] + (["What is 2 + 2?"] if command == "ask" else ["--port", "9"])
    done = run(*args, "--bank", str(real_bank_dir), "--pool", str(pool), **{present: secret})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"error: key variables not set: {absent} (named by the pool's api_key_env)"
    )
    assert secret not in done.stderr


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("top_k=0", "top_k: Input should be greater than or equal to 1"),
        ("top_k=two", "top_k: Input should be a valid integer"),
        ("top_k=true", "top_k: takes a number or a name, not true"),
        ("probe_margin=false", "probe_margin: takes a number or a name, not false"),
        ("aggregation=median", "aggregation: Input should be 'llm', 'vote' or 'vote_or_llm'"),
        ("no_such_knob=1", "no_such_knob: no such knob"),
        ("top_k", "--set takes NAME=VALUE, got 'top_k'"),
        ("=3", "--set takes NAME=VALUE, got '=3'"),
        ("bank=/elsewhere", "bank is given by --bank, not by --set"),
    ],
)
def test_bad_set_is_refused(setting: str, says: str, tmp_path: Path) -> None:
    # refused before anything is loaded: the bank and pool paths need not even exist
    result = CliRunner().invoke(
        app,
        [
            "ask",
            "q",
            "--bank",
            str(tmp_path / "no-bank"),
            "--pool",
            str(tmp_path / "no-pool.yaml"),
            "--set",
            setting,
        ],
    )
    assert result.exit_code == 2
    assert says in result.output
    assert result.output.startswith("error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bad_set_of_serve_is_refused(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["serve", "--bank", str(tmp_path), "--pool", str(tmp_path / "p.yaml"), "--set", "top_k=0"],
    )
    assert result.exit_code == 2
    assert "error: invalid --set: top_k" in result.output


# ------------------------------------------------------------------------------------------
# The README's walkthrough: replay-serve writes the pool, ask uses it
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_replay_serve_writes_a_pool_that_ask_can_use(
    data_file: Path, real_bank_dir: Path, real_test_rows: list[BankRow], local: Any, tmp_path: Path
) -> None:
    from live_servers import start_server

    from jisi_graph.pool import load_pool_spec

    pool_path = tmp_path / "replay-pool.yaml"
    server = start_server(
        "replay-serve-pool",
        lambda port: jisi(
            "replay-serve",
            "--data",
            str(data_file),
            "--split",
            "test",
            "--models",
            ",".join(REAL_MODELS),
            "--write-pool",
            str(pool_path),
            "--port",
            str(port),
        ),
        log_dir=tmp_path,
        env=child_env(),
    )
    try:
        spec = load_pool_spec(pool_path)
        assert [m.name for m in spec.models] == list(REAL_MODELS)
        assert {m.base_url for m in spec.models} == {server.base_url}
        question = real_test_rows[2].query
        done = run("ask", question, "--bank", str(real_bank_dir), "--pool", str(pool_path))
        assert done.returncode == 0, done.stderr
        assert done.stdout == local.invoke({"query": question})["answer"] + "\n"
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------
# Failing runs say so in the exit code; ports and output paths are checked before any work
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ask_json_exits_1_when_no_model_answered(real_bank_dir: Path, tmp_path: Path) -> None:
    dead = write_pool(tmp_path / "dead.yaml", "http://127.0.0.1:9/v1", REAL_MODELS)
    done = run(
        "ask", "What is 2 + 2?", "--bank", str(real_bank_dir), "--pool", str(dead), "--json",
        "--set", "timeout_s=2", "--set", "max_retries=0",
        **{REPLAY_KEY_ENV: REPLAY_KEY_VALUE},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["error"].startswith("no model answered")
    assert result["answer"] == "" and result["decision"]["mode"] == "error"


def test_replay_serve_on_a_taken_port_writes_no_pool(data_file: Path, tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    pool_path = tmp_path / "replay-pool.yaml"
    try:
        result = CliRunner().invoke(
            app,
            ["replay-serve", "--data", str(data_file), "--split", "test", "--port", str(port),
             "--write-pool", str(pool_path)],
        )  # fmt: skip
    finally:
        taken.close()
    assert result.exit_code == 2
    assert f"error: cannot listen on 127.0.0.1:{port}" in result.output
    assert not pool_path.exists()


@pytest.mark.parametrize("command", ["serve", "replay-serve"])
def test_a_port_outside_the_range_is_refused(command: str, tmp_path: Path) -> None:
    args = ["--bank", "b", "--pool", "p"] if command == "serve" else ["--data", "d"]
    result = CliRunner().invoke(app, [command, *args, "--port", "70000"])
    assert result.exit_code == 2
    assert "Invalid value for '--port': Input should be less than or equal to 65535" in " ".join(
        result.output.replace("│", " ").split()
    )


@pytest.mark.parametrize(
    ("option", "target", "says"),
    [
        ("--json", "folder", "--json {path} is a directory; give a file name"),
        ("--markdown", "a-file/report.md", "--markdown {path}: {root}/a-file is not a directory"),
        ("--plot", "plot.txt", "--plot {path}: the plot is written as .png, .pdf, .svg"),
    ],
)
def test_eval_output_paths_are_checked_before_the_run(
    option: str, target: str, says: str, tmp_path: Path
) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    path = tmp_path / target
    # --data and --bank do not exist: the output check comes first, before any work
    result = CliRunner().invoke(
        app, ["eval", "--data", "missing.jsonl", "--bank", "missing", option, str(path)]
    )
    assert result.exit_code == 2
    assert says.format(path=path, root=tmp_path) in " ".join(result.output.split())


def test_eval_creates_a_missing_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "z.json"
    result = CliRunner().invoke(
        app, ["eval", "--data", "missing.jsonl", "--bank", "b", "--json", str(out)]
    )
    assert result.output == "error: no bank at b: not a directory\n"  # the run's own error
    assert out.parent.is_dir() and not out.exists()
