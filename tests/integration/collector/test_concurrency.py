"""Several exporters at once, eviction under load, and the standalone `serve()` collector."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from homunculy_nb.collector import Collector
from homunculy_nb.run import open_run

pytestmark = pytest.mark.integration

SENDERS_PER_TRANSPORT = 3
REQUESTS_PER_SENDER = 20
SPANS_PER_REQUEST = 50


def trace_request(sender: str, request_index: int) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource = request.resource_spans.add()
    attribute = resource.resource.attributes.add()
    attribute.key = "service.name"
    attribute.value.string_value = sender
    scope = resource.scope_spans.add()
    trace_id = os.urandom(16)
    for index in range(SPANS_PER_REQUEST):
        span = scope.spans.add()
        span.trace_id = trace_id
        span.span_id = os.urandom(8)
        span.name = f"{sender}/{request_index}/{index}"
    return request


def send_grpc(endpoint: str, sender: str, errors: list[BaseException]) -> None:
    try:
        with grpc.insecure_channel(endpoint.removeprefix("http://")) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            for request_index in range(REQUESTS_PER_SENDER):
                stub.Export(trace_request(sender, request_index), timeout=60)
    except BaseException as exc:
        errors.append(exc)


def send_http(endpoint: str, sender: str, errors: list[BaseException]) -> None:
    try:
        with httpx.Client(base_url=endpoint, timeout=60) as client:
            for request_index in range(REQUESTS_PER_SENDER):
                response = client.post("/v1/traces", content=trace_request(sender, request_index).SerializeToString(),
                                       headers={"Content-Type": "application/x-protobuf"})
                response.raise_for_status()
    except BaseException as exc:
        errors.append(exc)


def test_concurrent_exporters_counts_add_up(collector):
    errors: list[BaseException] = []
    threads = [threading.Thread(target=send_grpc, args=(collector.endpoints["grpc"], f"grpc-{i}", errors))
               for i in range(SENDERS_PER_TRANSPORT)]
    threads += [threading.Thread(target=send_http, args=(collector.endpoints["http"], f"http-{i}", errors))
                for i in range(SENDERS_PER_TRANSPORT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    total = 2 * SENDERS_PER_TRANSPORT * REQUESTS_PER_SENDER * SPANS_PER_REQUEST
    spans = collector.spans()

    assert errors == []
    assert collector.stats().loc["spans", "accepted"] == total
    assert len(spans) == total
    assert spans["span_id"].nunique() == total
    assert spans.groupby("service_name").size().tolist() == [REQUESTS_PER_SENDER * SPANS_PER_REQUEST] * 6
    assert len(collector.traces()) == 2 * SENDERS_PER_TRANSPORT * REQUESTS_PER_SENDER


def test_eviction_at_small_limit_keeps_newest():
    with Collector(grpc_port=0, http_port=None, limits={"spans": 120}) as collector:
        with grpc.insecure_channel(collector.endpoints["grpc"].removeprefix("http://")) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            for request_index in range(5):
                stub.Export(trace_request("sender", request_index), timeout=60)
                collector.spans()

        names = collector.spans()["name"].tolist()
        stats = collector.stats().loc["spans"]

    assert names == [f"sender/{r}/{i}" for r in range(5) for i in range(SPANS_PER_REQUEST)][-120:]
    assert stats["evicted"] == 5 * SPANS_PER_REQUEST - 120
    assert stats["stored"] == 120


def test_serve_saves_on_sigterm(tmp_path):
    save_to = tmp_path / "run"
    code = "import sys; from homunculy_nb.collector import serve; serve('127.0.0.1', 0, 0, save_to=sys.argv[1])"
    process = subprocess.Popen([sys.executable, "-c", code, str(save_to)], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        banner = process.stdout.readline()
        http_endpoint = banner.rstrip(".\n").rsplit(" ", 1)[-1]
        document = {"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "from cli"}]}]}]}
        response = httpx.post(f"{http_endpoint}/v1/traces", content=json.dumps(document),
                              headers={"Content-Type": "application/json"}, timeout=30)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert response.status_code == 200
    assert process.returncode == 0
    assert "Saved 1 spans" in output
    assert open_run(save_to).spans()["name"].tolist() == ["from cli"]
