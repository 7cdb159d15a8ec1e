"""The OTLP/HTTP receiver: media types, gzip, status codes, partial success and bad input."""

from __future__ import annotations

import gzip
import json
import os
import socket

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from homunculy_nb.collector import Collector
from homunculy_nb.errors import CollectorError

pytestmark = pytest.mark.integration

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"
JSON = {"Content-Type": "application/json"}
PROTOBUF = {"Content-Type": "application/x-protobuf"}
LIMIT = 64 * 1024


def traces_json(*span_ids: str, trace_id: str = TRACE_ID) -> bytes:
    spans = [{"traceId": trace_id, "spanId": span_id, "name": f"span {span_id}", "kind": "SPAN_KIND_SERVER",
              "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": 1700000000001000000}
             for span_id in span_ids]
    return json.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": spans}]}]}).encode()


def traces_protobuf(count: int = 1, name: str = "pb") -> bytes:
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for index in range(count):
        span = scope.spans.add()
        span.trace_id = os.urandom(16)
        span.span_id = os.urandom(8)
        span.name = f"{name}-{index}"
    return request.SerializeToString()


@pytest.fixture
def limited():
    with Collector(grpc_port=None, http_port=0, limits={"http_body_bytes": LIMIT}) as running:
        with httpx.Client(base_url=running.endpoints["http"], timeout=30) as client:
            yield running, client


def assert_valid_export_succeeds(client: httpx.Client) -> None:
    response = client.post("/v1/traces", content=traces_protobuf(), headers=PROTOBUF)
    assert response.status_code == 200


def test_json_export_answers_json(limited):
    collector, client = limited

    response = client.post("/v1/traces", content=traces_json("EEE19B7EC3C1B174"),
                           headers={"Content-Type": "application/json; charset=utf-8"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"partialSuccess": {}}
    assert collector.spans()["trace_id"].tolist() == [TRACE_ID.lower()]


def test_protobuf_export_answers_protobuf(limited):
    collector, client = limited

    response = client.post("/v1/traces", content=traces_protobuf(3), headers=PROTOBUF)
    parsed = ExportTraceServiceResponse.FromString(response.content)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert parsed.HasField("partial_success")
    assert parsed.partial_success.rejected_spans == 0
    assert len(collector.spans()) == 3


def test_gzip_body_accepted(limited):
    collector, client = limited

    response = client.post("/v1/traces", content=gzip.compress(traces_protobuf(2)),
                           headers={**PROTOBUF, "Content-Encoding": "gzip"})

    assert response.status_code == 200
    assert len(collector.spans()) == 2


def test_chunked_body_accepted(limited):
    collector, client = limited
    body = traces_json("EEE19B7EC3C1B174", "EEE19B7EC3C1B175")

    response = client.post("/v1/traces", content=iter([body[:10], body[10:]]), headers=JSON)

    assert response.status_code == 200
    assert len(collector.spans()) == 2


def test_partial_success_for_one_bad_span(limited):
    collector, client = limited
    good = traces_json("EEE19B7EC3C1B174", "EEE19B7EC3C1B175")
    document = json.loads(good)
    document["resourceSpans"][0]["scopeSpans"][0]["spans"].append(
        {"traceId": "0" * 32, "spanId": "1111111111111111", "name": "zero trace"})

    response = client.post("/v1/traces", content=json.dumps(document).encode(), headers=JSON)

    assert response.status_code == 200
    assert response.json()["partialSuccess"]["rejectedSpans"] == 1
    assert "zero trace" in response.json()["partialSuccess"]["errorMessage"]
    assert len(collector.spans()) == 2
    assert collector.stats().loc["spans", "rejected"] == 1


def test_base64_trace_id_is_400_naming_field(limited):
    _, client = limited
    body = traces_json("EEE19B7EC3C1B174", trace_id="W47/95gDgQPSabYzgT/GDA==")

    response = client.post("/v1/traces", content=body, headers=JSON)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == 3
    assert "traceId" in response.json()["message"]
    assert_valid_export_succeeds(client)


BAD_PROTOBUF_BODIES = {
    "random bytes": os.urandom(2048),
    "truncated protobuf": traces_protobuf(4)[:-7],
}


@pytest.mark.parametrize("case", sorted(BAD_PROTOBUF_BODIES))
def test_undecodable_protobuf_is_400_status(limited, case):
    _, client = limited

    response = client.post("/v1/traces", content=BAD_PROTOBUF_BODIES[case], headers=PROTOBUF)
    status = status_pb2.Status.FromString(response.content)

    assert response.status_code == 400
    assert response.headers["content-type"] == "application/x-protobuf"
    assert status.code == 3
    assert "ExportTraceServiceRequest" in status.message
    assert_valid_export_succeeds(client)


def test_bad_gzip_is_400(limited):
    _, client = limited

    response = client.post("/v1/traces", content=b"\x1f\x8b\x08\x00garbage",
                           headers={**JSON, "Content-Encoding": "gzip"})

    assert response.status_code == 400
    assert "gzip" in response.json()["message"]
    assert_valid_export_succeeds(client)


def test_wrong_content_type_is_415(limited):
    _, client = limited

    response = client.post("/v1/traces", content=b"hello", headers={"Content-Type": "text/plain"})

    assert response.status_code == 415
    assert "text/plain" in response.json()["message"]
    assert_valid_export_succeeds(client)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_method_is_405(limited, method):
    _, client = limited

    response = client.request(method, "/v1/traces")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert_valid_export_succeeds(client)


def test_unknown_path_is_404(limited):
    _, client = limited

    response = client.post("/v1/profiles", content=b"{}", headers=JSON)

    assert response.status_code == 404
    assert_valid_export_succeeds(client)


def test_oversized_body_is_413(limited):
    collector, client = limited

    response = client.post("/v1/traces", content=b"x" * (LIMIT + 1), headers=PROTOBUF)

    assert response.status_code == 413
    assert str(LIMIT) in status_pb2.Status.FromString(response.content).message
    assert collector.stats().loc["spans", "received"] == 0
    assert_valid_export_succeeds(client)


def test_gzip_bomb_is_413(limited):
    _, client = limited
    bomb = gzip.compress(b"\x00" * (50 * LIMIT))

    response = client.post("/v1/traces", content=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"})

    assert len(bomb) < LIMIT
    assert response.status_code == 413
    assert_valid_export_succeeds(client)


def test_logs_and_metrics_paths():
    logs = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"body": {"stringValue": "hi"},
                                                             "severityNumber": 9}]}]}]}
    metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "up", "gauge": {"dataPoints": [{"asDouble": 1.0, "timeUnixNano": "1"}]}}]}]}]}

    with Collector(grpc_port=None, http_port=0) as collector:
        with httpx.Client(base_url=collector.endpoints["http"]) as client:
            logs_response = client.post("/v1/logs", content=json.dumps(logs), headers=JSON)
            metrics_response = client.post("/v1/metrics", content=json.dumps(metrics), headers=JSON)

        assert logs_response.json() == {"partialSuccess": {}}
        assert metrics_response.json() == {"partialSuccess": {}}
        assert collector.logs()["body"].tolist() == ["hi"]
        assert collector.metrics()["value"].tolist() == [1.0]


@pytest.mark.parametrize("presented", [None, "wrong-key"])
def test_missing_or_wrong_api_key_is_401(presented):
    with Collector(grpc_port=None, http_port=0, api_key="right-key") as collector:
        with httpx.Client(base_url=collector.endpoints["http"]) as client:
            headers = {**PROTOBUF, **({"x-otlp-api-key": presented} if presented else {})}
            rejected = client.post("/v1/traces", content=traces_protobuf(), headers=headers)
            accepted = client.post("/v1/traces", content=traces_protobuf(),
                                   headers={**PROTOBUF, "x-otlp-api-key": "right-key"})

        assert rejected.status_code == 401
        assert "x-otlp-api-key" in status_pb2.Status.FromString(rejected.content).message
        assert accepted.status_code == 200
        assert collector.stats().loc["spans", "accepted"] == 1


def test_port_in_use_names_fix():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(CollectorError, match="http_port=0"):
            Collector(grpc_port=None, http_port=port).start()
        with pytest.raises(CollectorError, match="grpc_port=0"):
            Collector(grpc_port=port, http_port=None).start()
