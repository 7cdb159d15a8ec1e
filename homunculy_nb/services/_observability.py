"""Logging and OpenTelemetry set-up shared by the reference services.

Log lines are JSON objects carrying the current `trace_id` and `span_id`, so a line can be matched to
its span. Tracing always runs through the SDK, so those ids exist even without a collector. Spans,
metrics and logs are exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces
endpoint) is set. `OTEL_EXPORTER_OTLP_PROTOCOL` selects `grpc` or `http/protobuf`, the specification's
default. The exporters
read the remaining `OTEL_*` variables (headers, service name, resource attributes, intervals) themselves.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace

logger = logging.getLogger(__name__)

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON line.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}

_PROTOCOLS = ("grpc", "http/protobuf")
HEALTH_PATHS = ("/health", "/api/v1/health")
SHUTDOWN_TIMEOUT = 3.0


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object with the active span's ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "message": record.getMessage(),
        }

        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            line["trace_id"] = format(span_context.trace_id, "032x")
            line["span_id"] = format(span_context.span_id, "016x")

        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_") and key not in line:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)

        return json.dumps(line, default=str)


@dataclass
class Telemetry:
    """The tracer, meter and providers of one service process."""

    service: str
    tracer: trace.Tracer
    meter: metrics.Meter
    exporting: bool
    _providers: list[Any] = field(default_factory=list)

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Flush and stop every provider, giving up after `timeout` seconds.

        An exporter whose collector is gone retries for longer than a stop signal allows, so the flush
        runs on a daemon thread that the process may leave behind when it exits.
        """
        def flush() -> None:
            for provider in self._providers:
                try:
                    provider.shutdown()
                except Exception:  # noqa: BLE001 - a failed flush must not block the process exit
                    logger.warning("Flushing telemetry failed", exc_info=True)

        worker = threading.Thread(target=flush, name="telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            logger.warning("Telemetry was not flushed within %.0f s; the rest is dropped", timeout)


def configure_logging(service: str) -> None:
    """Send every log line (the app's and uvicorn's) to stdout, as JSON unless `LOGGING_FORMAT=text`."""
    level_name = os.environ.get("LOGGING_LEVEL", "INFO").upper()
    level = logging.getLevelName(level_name)
    if not isinstance(level, int):
        raise ValueError(
            f"LOGGING_LEVEL={level_name!r} is not a logging level. "
            "Use DEBUG, INFO, WARNING or ERROR."
        )

    handler = logging.StreamHandler(sys.stdout)
    if os.environ.get("LOGGING_FORMAT", "json").lower() == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(JsonFormatter(service))

    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)

    # uvicorn configures its own loggers before it imports the app; route them through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, HealthProbeFilter) for existing in access.filters):
        access.addFilter(HealthProbeFilter())


class HealthProbeFilter(logging.Filter):
    """Drop uvicorn's access lines for successful health checks, which a launcher probes every few seconds.

    Failed health checks are kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record arguments: client address, method, path with query, HTTP version, status.
        args = record.args
        if not isinstance(args, tuple) or len(args) != 5:
            return True
        path, status = str(args[2]).partition("?")[0], args[4]
        return not (path in HEALTH_PATHS and status == 200)


def _otlp_protocol() -> str:
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if protocol not in _PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported. "
            "Use 'grpc' or 'http/protobuf'."
        )
    return protocol


def _exporting() -> bool:
    names = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(os.environ.get(name) for name in names)


def _exporters(protocol: str) -> tuple[Any, Any, Any]:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()


def configure_telemetry(service: str) -> Telemetry:
    """Set up the OpenTelemetry SDK for this process and return its tracer and meter.

    Instruments httpx and psycopg globally; call `instrument_app` for the FastAPI app.
    """
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override this default in Resource.create.
    resource = Resource.create({"service.name": service})
    tracer_provider = TracerProvider(resource=resource)
    providers: list[Any] = [tracer_provider]
    exporting = _exporting()

    if exporting:
        from opentelemetry._logs import set_logger_provider
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        protocol = _otlp_protocol()
        span_exporter, metric_exporter, log_exporter = _exporters(protocol)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))

        meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)]
        )
        metrics.set_meter_provider(meter_provider)

        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        set_logger_provider(logger_provider)
        logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))

        providers += [meter_provider, logger_provider]
        logger.info(
            "Exporting traces, metrics and logs over OTLP",
            extra={"otlp_endpoint": os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), "otlp_protocol": protocol},
        )

    trace.set_tracer_provider(tracer_provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=tracer_provider)
    PsycopgInstrumentor().instrument(tracer_provider=tracer_provider, skip_dep_check=True)

    return Telemetry(
        service=service,
        tracer=trace.get_tracer(f"homunculy_nb.services.{service}"),
        meter=metrics.get_meter(f"homunculy_nb.services.{service}"),
        exporting=exporting,
        _providers=providers,
    )


def instrument_app(app: Any) -> None:
    """Trace the app's HTTP requests and WebSocket connections, without a span per frame."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=trace.get_tracer_provider(), exclude_spans=["receive", "send"],
        excluded_urls="health,/api/v1/health",
    )
