"""Real `jisi` processes on loopback for the tests: start, wait until ready, stop.

`jisi replay-serve` answers as each recorded model of the shared data, so that `jisi serve`,
`jisi ask` and the examples run their live path (`ChatOpenAI` over HTTP) with nothing external.
Each process gets a free port (retried on another port if it could not bind), its output goes
to a log file shown when it fails, and it runs in its own process group, stopped at the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

START_DEADLINE_S = 180.0
PROCESS_TIMEOUT_S = 240.0
REPLAY_KEY_ENV = "JISI_TEST_REPLAY_KEY"
"""The key variable the test pools name; its value is only ever set in the child's env."""
REPLAY_KEY_VALUE = "sk-test-replay-0123456789"
REPLAY_PRICES = {
    # USD per million input / output tokens, as a pool over the replay server charges them
    "o1-mini-2024-09-12": (3.0, 12.0),
    "gpt-4o-2024-08-06": (2.5, 10.0),
    "gemma-2-2b-it": (0.15, 0.6),
}
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}


def jisi(*args: str) -> list[str]:
    """The argv of a `jisi` command run by this interpreter."""
    return [sys.executable, "-m", "jisi_graph", *args]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment, offline, without the test key unless given in `extra`."""
    env = {key: value for key, value in os.environ.items() if key != REPLAY_KEY_ENV}
    env.update(OFFLINE_ENV)
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A `jisi` subprocess serving HTTP on loopback."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    port: int

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def log_text(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the process group (SIGTERM, then SIGKILL) and reap the process."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_server(
    name: str,
    argv_for_port: Callable[[int], Sequence[str]],
    *,
    log_dir: Path,
    env: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
    deadline_s: float = START_DEADLINE_S,
    attempts: int = 3,
) -> ServerProcess:
    """Start a server on a free port and wait until `GET /v1/models` answers 200.

    A process that exits before it is ready (its port was taken meanwhile) is started again on
    another port; one that is still not ready at the deadline fails the test with its log.
    """
    for attempt in range(attempts):
        port = free_port()
        log = log_dir / f"{name}-{attempt}.log"
        with log.open("wb") as sink:
            process = subprocess.Popen(
                list(argv_for_port(port)),
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
            )
        server = ServerProcess(name=name, process=process, log=log, port=port)
        if wait_ready(server, headers or {}, deadline_s):
            return server
        server.stop()
        if "address already in use" not in server.log_text():
            break
    code = server.process.returncode
    pytest.fail(f"{name} did not start (exit code {code})\n{server.log_text()}")


def wait_ready(server: ServerProcess, headers: Mapping[str, str], deadline_s: float) -> bool:
    """True once the server answers; False if it exited; a test failure at the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            reply = httpx.get(f"{server.base_url}/models", headers=dict(headers), timeout=5)
            if reply.status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    server.stop()
    pytest.fail(f"{server.name} not ready after {deadline_s:.0f} s\n{server.log_text()}")


def start_replay_server(data_file: Path, log_dir: Path) -> ServerProcess:
    """`jisi replay-serve` over the test split of `data_file`."""
    return start_server(
        "replay-serve",
        lambda port: jisi(
            "replay-serve", "--data", str(data_file), "--split", "test", "--port", str(port)
        ),
        log_dir=log_dir,
        env=child_env(),
    )


def write_pool(
    path: Path,
    base_url: str,
    models: Sequence[str],
    *,
    prices: Mapping[str, tuple[float, float]] = REPLAY_PRICES,
    key_env: str | None = REPLAY_KEY_ENV,
) -> Path:
    """A pool file whose models are served at `base_url`, at `prices`."""
    lines = ["defaults:", f"  base_url: {base_url}"]
    if key_env:
        lines.append(f"  api_key_env: {key_env}")
    lines.append("models:")
    for name in models:
        price_in, price_out = prices[name]
        lines += [
            f"  - name: {name}",
            f"    input_price: {price_in}",
            f"    output_price: {price_out}",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def priced_cost(
    calls: Sequence[Mapping[str, object]], prices: Mapping[str, tuple[float, float]]
) -> float:
    """USD of `calls` (decision records) at `prices` per million input / output tokens."""
    return sum(
        (
            int(call["input_tokens"]) * prices[str(call["model"])][0]
            + int(call["output_tokens"]) * prices[str(call["model"])][1]
        )
        / 1e6
        for call in calls
    )
