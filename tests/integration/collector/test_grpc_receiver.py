"""The OTLP/gRPC receiver: Export on the three services, gzip, limits, API key and bad input."""

from __future__ import annotations

import os

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from homunculy_nb.collector import Collector

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def trace_request(count: int = 1, zero_trace_ids: int = 0) -> trace_service_pb2.ExportTraceServiceRequest:
    request = trace_service_pb2.ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for index in range(count + zero_trace_ids):
        span = scope.spans.add()
        span.trace_id = bytes(16) if index >= count else os.urandom(16)
        span.span_id = os.urandom(8)
        span.name = f"span-{index}"
    return request


@pytest.fixture
def grpc_collector():
    with Collector(grpc_port=0, http_port=None, limits={"grpc_message_bytes": LIMIT}) as collector:
        channel = grpc.insecure_channel(collector.endpoints["grpc"].removeprefix("http://"))
        yield collector, channel
        channel.close()


def assert_valid_export_succeeds(channel: grpc.Channel) -> None:
    response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(), timeout=30)
    assert response.partial_success.rejected_spans == 0


def test_export_on_all_three_services(grpc_collector):
    collector, channel = grpc_collector
    logs = logs_service_pb2.ExportLogsServiceRequest()
    logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = "hello"
    metrics = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add()
    metric.name = "up"
    metric.gauge.data_points.add().as_int = 1

    trace_response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(2), timeout=30)
    logs_service_pb2_grpc.LogsServiceStub(channel).Export(logs, timeout=30)
    metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(metrics, timeout=30)

    assert trace_response.HasField("partial_success")
    assert trace_response.partial_success.error_message == ""
    assert len(collector.spans()) == 2
    assert collector.logs()["body"].tolist() == ["hello"]
    assert collector.metrics()["value_int"].tolist() == [1]


def test_gzip_compressed_export(grpc_collector):
    collector, channel = grpc_collector

    trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(3), compression=grpc.Compression.Gzip,
                                                            timeout=30)

    assert len(collector.spans()) == 3


def test_partial_success_counts_rejected(grpc_collector):
    collector, channel = grpc_collector

    response = trace_service_pb2_grpc.TraceServiceStub(channel).Export(trace_request(2, zero_trace_ids=1),
                                                                       timeout=30)

    assert response.partial_success.rejected_spans == 1
    assert "all-zero" in response.partial_success.error_message
    assert len(collector.spans()) == 2


@pytest.mark.parametrize("body", [os.urandom(512), trace_request(3).SerializeToString()[:-4]],
                         ids=["random bytes", "truncated protobuf"])
def test_undecodable_message_is_invalid_argument(grpc_collector, body):
    _, channel = grpc_collector
    export = channel.unary_unary(TRACE_EXPORT)

    with pytest.raises(grpc.RpcError) as caught:
        export(body, timeout=30)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ExportTraceServiceRequest" in caught.value.details()
    assert_valid_export_succeeds(channel)


def test_wrong_id_length_is_invalid_argument(grpc_collector):
    _, channel = grpc_collector
    request = trace_request()
    request.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x01\x02"

    with pytest.raises(grpc.RpcError) as caught:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=30)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "spanId" in caught.value.details()
    assert_valid_export_succeeds(channel)


def test_oversized_message_is_resource_exhausted(grpc_collector):
    collector, channel = grpc_collector
    request = trace_request()
    request.resource_spans[0].scope_spans[0].spans[0].name = "x" * (LIMIT + 10)

    with pytest.raises(grpc.RpcError) as caught:
        trace_service_pb2_grpc.TraceServiceStub(channel).Export(request, timeout=30)

    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(LIMIT) in caught.value.details()
    assert collector.stats().loc["spans", "received"] == 0
    assert_valid_export_succeeds(channel)


@pytest.mark.parametrize("metadata", [None, (("x-otlp-api-key", "wrong"),)], ids=["missing", "wrong"])
def test_missing_or_wrong_api_key_is_unauthenticated(metadata):
    with Collector(grpc_port=0, http_port=None, api_key="right-key") as collector:
        with grpc.insecure_channel(collector.endpoints["grpc"].removeprefix("http://")) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Export(trace_request(), metadata=metadata, timeout=30)
            stub.Export(trace_request(), metadata=(("x-otlp-api-key", "right-key"),), timeout=30)

        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert collector.stats().loc["spans", "accepted"] == 1
