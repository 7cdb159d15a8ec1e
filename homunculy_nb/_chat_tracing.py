"""Client spans for chat connections and turns, from tracer providers the chat client owns.

The providers are never installed as OpenTelemetry's global provider, so a notebook's own tracing setup
and the chat client's spans stay apart. One provider exists per (OTLP endpoint, API key) pair and lives
until the interpreter exits; spans go to the endpoint over OTLP gRPC in batches.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, Tracer, format_span_id, format_trace_id, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from collections.abc import Mapping

logger = logging.getLogger(__name__)

SERVICE_NAME = "homunculy-nb-chat"
API_KEY_HEADER = "x-otlp-api-key"

# A short batch delay so spans show up in a notebook's collector views within a second.
EXPORT_DELAY_MS = 500

_lock = threading.Lock()
_providers: dict[tuple[str | None, str | None], TracerProvider] = {}
_propagator = TraceContextTextMapPropagator()


def tracer_for(endpoint: str | None, api_key: str | None = None) -> Tracer:
    """Return the chat tracer that exports to the OTLP gRPC `endpoint`, or exports nothing when it is None."""
    return _provider_for(endpoint, api_key).get_tracer("homunculy_nb.chat")


def force_flush(endpoint: str | None, api_key: str | None = None, timeout_ms: int = 5000) -> bool:
    """Export the spans still batched for `endpoint`; return False when the export did not finish in time."""
    with _lock:
        provider = _providers.get((endpoint, api_key))
    if provider is None:
        return True
    return provider.force_flush(timeout_ms)


def inject(span: Span, carrier: dict[str, str]) -> dict[str, str]:
    """Write the W3C `traceparent` (and `tracestate` when set) of `span` into `carrier` and return it."""
    _propagator.inject(carrier, context=set_span_in_context(span))
    return carrier


def ids(span: Span) -> tuple[str, str]:
    """Return the span's trace id and span id as lowercase hex."""
    context = span.get_span_context()
    return format_trace_id(context.trace_id), format_span_id(context.span_id)


def _provider_for(endpoint: str | None, api_key: str | None) -> TracerProvider:
    key = (endpoint, api_key)
    with _lock:
        provider = _providers.get(key)
        if provider is None:
            provider = _new_provider(endpoint, {API_KEY_HEADER: api_key} if api_key else {})
            _providers[key] = provider
        return provider


def _new_provider(endpoint: str | None, headers: Mapping[str, str]) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    if endpoint is None:
        return provider

    # The gRPC exporter pulls in grpc, so it is imported only when spans leave the process.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"),
                                headers=dict(headers) or None)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=EXPORT_DELAY_MS))
    logger.info("Chat client spans export to %s over OTLP gRPC", endpoint)
    return provider
