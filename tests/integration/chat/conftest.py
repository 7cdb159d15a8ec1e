"""The reference agent launched for real: PostgreSQL, the local LLM and the agent as processes, and a Collector.

Every server binds 127.0.0.1 on a free port; processes are stopped and data removed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import homunculy_nb

REPO_ROOT = Path(homunculy_nb.__file__).resolve().parents[1]
AGENT_CHANGELOG = REPO_ROOT / "homunculy_nb" / "services" / "agent" / "changelog" / "changelog.xml"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgres_bin(name: str) -> str:
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / name).exists():
            return str(directory / name)
    pytest.skip(f"PostgreSQL's {name} is not installed; run `apt-get install postgresql`")


@pytest.fixture(scope="session")
def agent_database() -> Iterator[str]:
    """A throwaway PostgreSQL cluster with the agent's database migrated; yields its URI."""
    base = Path(tempfile.mkdtemp(prefix="homunculy-chat-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port = _free_port()
    data = base / "data"
    try:
        subprocess.run([*as_user, _postgres_bin("initdb"), "-D", str(data), "-U", "chat", "--auth=trust",
                        "--no-sync"], check=True, capture_output=True)
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        subprocess.run([*as_user, _postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-l",
                        str(base / "server.log"), "-w", "start"], check=True, capture_output=True)
        with psycopg.connect(f"postgresql://chat@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "homunculy"')
        uri = f"postgresql://chat@127.0.0.1:{port}/homunculy"
        result = subprocess.run([sys.executable, "-m", "homunculy_nb.migrations", str(AGENT_CHANGELOG)],
                                env={**os.environ, "DATABASE_URI": uri, "PYTHONPATH": str(REPO_ROOT)},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"migrations failed:\n{result.stdout}\n{result.stderr}"
        yield uri
    finally:
        subprocess.run([*as_user, _postgres_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


class ServiceProcess:
    """A reference service run by uvicorn as a child process, logging to a file."""

    def __init__(self, app: str, env: dict[str, str], log_path: Path) -> None:
        self.app = app
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.app} exited with {self.process.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"{self.app} was not healthy within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM lets uvicorn close its connections; kill only if it hangs.
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def collector() -> Iterator[Any]:
    from homunculy_nb.collector import Collector

    with Collector(grpc_port=0, http_port=0) as running:
        yield running


@pytest.fixture(scope="session")
def agent_service(agent_database: str, collector: Any,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The local LLM and the reference agent, the agent exporting its spans to `collector`."""
    logs = tmp_path_factory.mktemp("chat-service-logs")
    started: list[ServiceProcess] = []
    telemetry = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoints["http"],
                 "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    try:
        # 40 tokens/s streams long enough for an interrupt to land mid-reply.
        llm = ServiceProcess("homunculy_nb.services.llm:app", {
            "LOCAL_LLM_TTFT_MS": "20", "LOCAL_LLM_TOKENS_PER_SECOND": "40", "OTEL_SERVICE_NAME": "llm",
        }, logs / "llm.log")
        started.append(llm.start())
        agent = ServiceProcess("homunculy_nb.services.agent:app", {
            "DATABASE_URI": agent_database, "LLM_OPENAI_BASE_URL": f"{llm.url}/v1", "LLM_OPENAI_API_KEY": "test",
            "TTS_LOCAL_SYNTHESIZER": "tone", "OTEL_SERVICE_NAME": "homunculy-app", **telemetry,
        }, logs / "agent.log")
        started.append(agent.start())
        yield agent
    finally:
        for process in reversed(started):
            process.stop()
        shutil.rmtree(logs, ignore_errors=True)


@pytest.fixture(scope="session")
def chat_url(agent_service: ServiceProcess) -> str:
    return agent_service.url.replace("http://", "ws://") + "/api/v1/ws/chat"
