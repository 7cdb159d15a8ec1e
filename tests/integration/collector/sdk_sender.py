"""Child process: export known traces, logs and metrics with the real OpenTelemetry SDK exporters.

    python sdk_sender.py grpc|http ENDPOINT [API_KEY]

Prints one JSON object with the ids and times it produced, so the test can compare the frames.
"""

from __future__ import annotations

import json
import logging
import sys

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context, use_span

START_NS = 1_790_000_000_123_456_789


def exporters(protocol: str, endpoint: str, api_key: str | None):
    headers = {"x-otlp-api-key": api_key} if api_key else None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        grpc_headers = tuple(headers.items()) if headers else None
        return (OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=grpc_headers),
                OTLPLogExporter(endpoint=endpoint, insecure=True, headers=grpc_headers),
                OTLPMetricExporter(endpoint=endpoint, insecure=True, headers=grpc_headers))

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return (OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces", headers=headers),
            OTLPLogExporter(endpoint=f"{endpoint}/v1/logs", headers=headers),
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics", headers=headers))


def main() -> None:
    protocol, endpoint = sys.argv[1], sys.argv[2]
    api_key = sys.argv[3] if len(sys.argv) > 3 else None
    span_exporter, log_exporter, metric_exporter = exporters(protocol, endpoint, api_key)
    resource = Resource.create({"service.name": f"sdk-{protocol}", "service.instance.id": "instance-1",
                                "deployment.environment": "test"})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    tracer = tracer_provider.get_tracer("sdk-sender", "1.0")
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
    log = logging.getLogger("sdk-sender")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(logger_provider=logger_provider))

    root = tracer.start_span("POST /checkout", kind=SpanKind.SERVER, start_time=START_NS,
                             attributes={"http.route": "/checkout", "order.count": 3, "ratio": 0.25,
                                         "flag": True, "tags": ["a", "b"]})
    context = set_span_in_context(root)
    child = tracer.start_span("SELECT orders", kind=SpanKind.CLIENT, context=context,
                              start_time=START_NS + 1_000_000, attributes={"db.system": "postgresql"})
    child.add_event("retry", {"attempt": 2}, timestamp=START_NS + 2_000_000)
    child.set_status(Status(StatusCode.ERROR, "deadlock detected"))
    child.end(end_time=START_NS + 13_345_000)
    logging_span = tracer.start_span("log scope", context=context, start_time=START_NS + 14_000_000)
    with use_span(logging_span, end_on_exit=False):
        log.warning("payment declined for %s", "order-7")
    logging_span.end(end_time=START_NS + 15_000_000)
    root.end(end_time=START_NS + 25_000_000)

    meter_provider = MeterProvider(resource=resource, metric_readers=[
        PeriodicExportingMetricReader(metric_exporter, export_interval_millis=3_600_000)])
    meter = meter_provider.get_meter("sdk-sender")
    orders = meter.create_counter("orders", unit="1", description="Orders placed")
    orders.add(2, {"region": "eu"})
    orders.add(5, {"region": "eu"})
    latency = meter.create_histogram("latency_ms", unit="ms")
    for value in (5, 20, 120):
        latency.record(value, {"route": "/checkout"})
    meter.create_gauge("queue_depth").set(42, {"queue": "email"})

    tracer_provider.force_flush()
    logger_provider.force_flush()
    meter_provider.force_flush()
    meter_provider.shutdown()
    tracer_provider.shutdown()
    logger_provider.shutdown()

    print(json.dumps({
        "trace_id": format(root.get_span_context().trace_id, "032x"),
        "root_span_id": format(root.get_span_context().span_id, "016x"),
        "child_span_id": format(child.get_span_context().span_id, "016x"),
        "logging_span_id": format(logging_span.get_span_context().span_id, "016x"),
    }))


if __name__ == "__main__":
    main()
