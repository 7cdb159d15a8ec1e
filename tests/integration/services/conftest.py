"""Fixtures that run the reference services for real: PostgreSQL, uvicorn processes, an OTLP receiver.

Every server binds 127.0.0.1 on a free port and is stopped (and its data removed) at teardown.
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
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import homunculy_nb.services

SERVICES_DIR = Path(homunculy_nb.services.__file__).parent
AGENT_CHANGELOG = SERVICES_DIR / "agent" / "changelog" / "changelog.xml"
MANAGEMENT_CHANGELOG = SERVICES_DIR / "management" / "changelog" / "changelog.xml"
REPO_ROOT = SERVICES_DIR.parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- PostgreSQL ---------------------------------------------------------------------------------


class PostgresServer:
    """A throwaway PostgreSQL server started by the package's own runtime."""

    def __init__(self, handle: Any, password: str) -> None:
        self.handle = handle
        self.port = handle.port
        self.user = handle.user
        self.password = password

    def uri(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"


def apply_changelog(changelog: Path, uri: str) -> None:
    """Apply a service's changelog with the package's migration command, as the stack does."""
    result = subprocess.run(
        [sys.executable, "-m", "homunculy_nb.migrations", str(changelog)],
        env={**os.environ, "DATABASE_URI": uri, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"migrations failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    from homunculy_nb import _loop
    from homunculy_nb.runtimes.base import Launch
    from homunculy_nb.runtimes.postgres import PostgresRuntime

    # Outside pytest's temporary root, which is private to root while the server may run as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="homunculy-services-pg-"))
    password = "services-test-password"
    launch = Launch(
        name="services-postgres", run_dir=base, ports={"tcp": free_port()},
        options={"user": "postgres", "password": password, "databases": ["homunculy", "management"],
                 "data_dir": base / "data", "persistent": False},
    )
    handle = _loop.run(PostgresRuntime().start(launch), timeout=120)
    try:
        yield PostgresServer(handle, password)
    finally:
        _loop.run(handle.stop(timeout=10), timeout=60)
        shutil.rmtree(base, ignore_errors=True)


# -- OTLP receiver ------------------------------------------------------------------------------


class OtlpReceiver:
    """An OTLP/HTTP endpoint that decodes what the services' SDK exporters send."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.receive(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def receive(self, path: str, body: bytes) -> None:
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            rows = [
                {"service": _service(resource_spans.resource), "name": span.name,
                 "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                 "parent_span_id": span.parent_span_id.hex(),
                 "attributes": {a.key: _value(a.value) for a in span.attributes}}
                for resource_spans in request.resource_spans
                for scope in resource_spans.scope_spans for span in scope.spans
            ]
            with self._lock:
                self.spans.extend(rows)
        elif path == "/v1/metrics":
            request = ExportMetricsServiceRequest.FromString(body)
            rows = [{"service": _service(rm.resource), "name": metric.name}
                    for rm in request.resource_metrics for scope in rm.scope_metrics for metric in scope.metrics]
            with self._lock:
                self.metrics.extend(rows)
        elif path == "/v1/logs":
            request = ExportLogsServiceRequest.FromString(body)
            rows = [{"service": _service(rl.resource), "body": _value(record.body),
                     "trace_id": record.trace_id.hex()}
                    for rl in request.resource_logs for scope in rl.scope_logs for record in scope.log_records]
            with self._lock:
                self.logs.extend(rows)

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll the received spans until `predicate(spans)` is true; return the spans."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _service(resource: Any) -> str:
    for attribute in resource.attributes:
        if attribute.key == "service.name":
            return attribute.value.string_value
    return ""


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


# -- service processes --------------------------------------------------------------------------


class ServiceProcess:
    """One reference service run by uvicorn as a child process."""

    def __init__(self, app: str, env: dict[str, str], log_path: Path) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", self.app, "--host", "127.0.0.1", "--port", str(self.port)],
                env=self._env, stdout=log, stderr=subprocess.STDOUT,
            )
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
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def telemetry_env(otlp: OtlpReceiver, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_BLRP_SCHEDULE_DELAY": "200",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
    }


@pytest.fixture(scope="session")
def services(postgres: PostgresServer, otlp: OtlpReceiver,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The LLM, agent and management services wired together, with their databases migrated."""
    logs = tmp_path_factory.mktemp("service-logs")
    agent_uri = postgres.uri("homunculy")
    management_uri = postgres.uri("management")
    apply_changelog(AGENT_CHANGELOG, agent_uri)
    apply_changelog(MANAGEMENT_CHANGELOG, management_uri)

    started: list[ServiceProcess] = []
    try:
        llm = ServiceProcess("homunculy_nb.services.llm:app", {
            # Slow enough that a second request reliably arrives while the first reply streams.
            "LOCAL_LLM_TTFT_MS": "20", "LOCAL_LLM_TOKENS_PER_SECOND": "100", **telemetry_env(otlp, "llm"),
        }, logs / "llm.log")
        started.append(llm.start())
        agent = ServiceProcess("homunculy_nb.services.agent:app", {
            "DATABASE_URI": agent_uri, "LLM_OPENAI_BASE_URL": f"{llm.url}/v1", "LLM_OPENAI_API_KEY": "test",
            "TTS_LOCAL_SYNTHESIZER": "tone", **telemetry_env(otlp, "homunculy-app"),
        }, logs / "agent.log")
        started.append(agent.start())
        management = ServiceProcess("homunculy_nb.services.management:app", {
            "DB_HOST": "127.0.0.1", "DB_PORT": str(postgres.port), "DB_NAME": "management", "DB_USER": postgres.user,
            "DB_PASSWORD": postgres.password, "HOMUNCULY_BASE_URL": agent.url, "HOMUNCULY_API_KEY": "test-key",
            **telemetry_env(otlp, "management-app"),
        }, logs / "management.log")
        started.append(management.start())
        yield {"llm": llm, "agent": agent, "management": management, "agent_uri": agent_uri,
               "management_uri": management_uri}
    finally:
        for process in reversed(started):
            process.stop()
        shutil.rmtree(logs, ignore_errors=True)
