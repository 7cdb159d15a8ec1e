"""Fixtures for the chat client's tests: the scripted agent server and an OTLP gRPC trace receiver."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_SERVER_PATH = Path(__file__).with_name("agent_server.py")


def _load_agent_server() -> Any:
    # Test folders are not packages (pytest uses importlib mode), so the helper is loaded by path.
    if "chat_agent_server" in sys.modules:
        return sys.modules["chat_agent_server"]
    spec = importlib.util.spec_from_file_location("chat_agent_server", _SERVER_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chat_agent_server"] = module
    spec.loader.exec_module(module)
    return module


agent_server_module = _load_agent_server()


@pytest.fixture
def server_module() -> Any:
    return agent_server_module


@pytest.fixture
def agent() -> Iterator[Any]:
    """A scripted agent chat server on a free port."""
    with agent_server_module.AgentServer() as server:
        yield server


@pytest.fixture
def make_agent() -> Iterator[Callable[..., Any]]:
    """A factory for agent servers with options; every server is stopped after the test."""
    servers = []

    def make(**options: Any) -> Any:
        server = agent_server_module.AgentServer(**options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def wait_until() -> Callable[..., bool]:
    """Return a poller: `wait_until(condition, timeout=15)` is True once `condition()` holds."""
    return _wait_until


class TraceReceiver:
    """An OTLP gRPC trace receiver on a free port that keeps every span and the request metadata."""

    def __init__(self) -> None:
        import grpc
        from concurrent import futures
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        receiver = self
        self.spans: list[dict[str, Any]] = []
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC method name
                with receiver._lock:
                    receiver.metadata.append(dict(context.invocation_metadata()))
                    for resource_spans in request.resource_spans:
                        service = {attribute.key: attribute.value.string_value
                                   for attribute in resource_spans.resource.attributes}.get("service.name")
                        for scope_spans in resource_spans.scope_spans:
                            for span in scope_spans.spans:
                                receiver.spans.append({
                                    "service": service, "name": span.name, "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "links": [link.span_id.hex() for link in span.links],
                                })
                return trace_service_pb2.ExportTraceServiceResponse()

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trace_ids(self) -> set[str]:
        with self._lock:
            return {span["trace_id"] for span in self.spans}


@pytest.fixture
def trace_receiver() -> Iterator[TraceReceiver]:
    receiver = TraceReceiver()
    yield receiver
    receiver.server.stop(grace=None).wait(10)
