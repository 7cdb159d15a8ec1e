"""OTLP decoding: export requests in protobuf or OTLP/JSON, flattened into column batches.

Each `flatten_*` function walks one decoded export request and appends one value per item to plain
Python lists, one list per column, so the store can extend its columns without building a row object
per item. Span and log ids stay raw bytes (all zero when absent) and times stay integer nanoseconds
since the Unix epoch. `homunculy_nb.telemetry` turns whole columns into hex strings and pandas types
when a frame is requested, which is much faster than converting each value on ingest.

A request that cannot be decoded at all raises `InvalidExportError`, which the receivers turn into
HTTP 400 or gRPC INVALID_ARGUMENT. Items that decode but cannot be stored (a span with an all-zero
trace id, a metric without a name) are counted in `Batch.rejected` and the rest of the request is kept,
so the receivers can answer with a partial success.
"""

from __future__ import annotations

import base64
from array import array
import json
from sys import intern
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

SIGNALS = ("spans", "logs", "metrics")
"""The store's signal names, in the order frames and stats list them."""

HTTP_PATHS = {"/v1/traces": "spans", "/v1/logs": "logs", "/v1/metrics": "metrics"}
"""OTLP/HTTP request paths and the signal each one carries."""

REQUEST_TYPES = {
    "spans": trace_service_pb2.ExportTraceServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
}
RESPONSE_TYPES = {
    "spans": trace_service_pb2.ExportTraceServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
}
REJECTED_FIELDS = {"spans": "rejected_spans", "logs": "rejected_log_records", "metrics": "rejected_data_points"}
"""The partial-success field that counts rejected items, per signal."""

SPAN_KIND_NAMES = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
STATUS_CODE_NAMES = ("UNSET", "OK", "ERROR")
AGGREGATION_TEMPORALITY_NAMES = ("UNSPECIFIED", "DELTA", "CUMULATIVE")

SPAN_COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "name", "kind", "service_name", "service_instance_id",
    "scope_name", "start_time", "end_time", "status_code", "status_message", "attributes",
    "resource_attributes", "events", "links",
)
LOG_COLUMNS = (
    "time", "observed_time", "severity_number", "severity_text", "body", "service_name",
    "service_instance_id", "scope_name", "trace_id", "span_id", "attributes", "resource_attributes",
)
METRIC_COLUMNS = (
    "name", "description", "unit", "type", "service_name", "service_instance_id", "scope_name",
    "attributes", "resource_attributes", "start_time", "time", "value", "value_int", "count", "sum",
    "min", "max", "bucket_counts", "explicit_bounds", "exponential_buckets", "quantiles", "exemplars",
    "is_monotonic", "aggregation_temporality",
)
COLUMNS = {"spans": SPAN_COLUMNS, "logs": LOG_COLUMNS, "metrics": METRIC_COLUMNS}

_SCALAR_VALUE_FIELDS = frozenset(("string_value", "bool_value", "int_value", "double_value", "bytes_value"))
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_UNKNOWN_SERVICE = "unknown_service"


class InvalidExportError(ValueError):
    """Raised when an export request cannot be decoded; the message names the offending field."""


@dataclass
class Batch:
    """The decoded items of one export request for one signal, as encoded columns of equal length."""

    signal: str
    columns: dict[str, Any]
    """Column name -> encoded values; `homunculy_nb.telemetry.COLUMN_TYPES` describes each encoding."""
    received: int = 0
    rejected: int = 0
    reject_reasons: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of items stored from this request (received minus rejected)."""
        return self.received - self.rejected

    def reject(self, reason: str) -> None:
        """Count one rejected item; the first few distinct reasons go into the response message."""
        self.rejected += 1
        if len(self.reject_reasons) < 3 and reason not in self.reject_reasons:
            self.reject_reasons.append(reason)

    @property
    def error_message(self) -> str:
        """The partial-success message, empty when nothing was rejected."""
        if not self.rejected:
            return ""
        return f"Rejected {self.rejected} of {self.received} {self.signal}: " + "; ".join(self.reject_reasons)


# --- request parsing ---------------------------------------------------------------------------------


def parse_protobuf(signal: str, body: bytes) -> Any:
    """Parse a binary protobuf export request for `signal`."""
    request_type = REQUEST_TYPES[signal]
    try:
        return request_type.FromString(body)
    except DecodeError as exc:
        raise InvalidExportError(
            f"The body is not a valid protobuf {request_type.DESCRIPTOR.name} ({len(body)} bytes): {exc}."
        ) from exc


def parse_json(signal: str, body: bytes) -> Any:
    """Parse an OTLP/JSON export request for `signal`.

    OTLP/JSON differs from the standard protobuf JSON mapping in one way: trace and span ids are hex
    strings, not base64. They are converted here before `json_format` parses the rest, which accepts
    enum names or integers, int64 values as strings or numbers, and ignores unknown fields.
    """
    request_type = REQUEST_TYPES[signal]
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidExportError(f"The body is not valid JSON: {exc}.") from exc
    except RecursionError:
        raise InvalidExportError(
            "The JSON body nests arrays or objects too deeply to parse. OTLP/JSON needs only a few levels; "
            "flatten nested attribute values."
        ) from None
    if not isinstance(document, dict):
        raise InvalidExportError(
            f"The body must be a JSON object ({request_type.DESCRIPTOR.name}), got {type(document).__name__}."
        )

    _convert_hex_ids(signal, document)
    message = request_type()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise InvalidExportError(f"The JSON body is not a valid {request_type.DESCRIPTOR.name}: {exc}") from exc
    return message


def _items(container: Any, camel: str, snake: str) -> list[Any]:
    """Return the list under `camel` or `snake` (both spellings are valid OTLP/JSON), or []."""
    if not isinstance(container, dict):
        return []
    value = container.get(camel, container.get(snake))
    return value if isinstance(value, list) else []


def _convert_hex_ids(signal: str, document: dict[str, Any]) -> None:
    """Rewrite the hex trace and span ids of an OTLP/JSON document as base64, in place."""
    if signal == "spans":
        for i, resource in enumerate(_items(document, "resourceSpans", "resource_spans")):
            for j, scope in enumerate(_items(resource, "scopeSpans", "scope_spans")):
                for k, span in enumerate(_items(scope, "spans", "spans")):
                    where = f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]"
                    _convert_ids(span, where)
                    for m, link in enumerate(_items(span, "links", "links")):
                        _convert_ids(link, f"{where}.links[{m}]")
    elif signal == "logs":
        for i, resource in enumerate(_items(document, "resourceLogs", "resource_logs")):
            for j, scope in enumerate(_items(resource, "scopeLogs", "scope_logs")):
                for k, record in enumerate(_items(scope, "logRecords", "log_records")):
                    _convert_ids(record, f"resourceLogs[{i}].scopeLogs[{j}].logRecords[{k}]")
    else:
        for i, resource in enumerate(_items(document, "resourceMetrics", "resource_metrics")):
            for j, scope in enumerate(_items(resource, "scopeMetrics", "scope_metrics")):
                for k, metric in enumerate(_items(scope, "metrics", "metrics")):
                    if not isinstance(metric, dict):
                        continue
                    for data_name in ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram"):
                        data = metric.get(data_name)
                        for p, point in enumerate(_items(data, "dataPoints", "data_points")):
                            for e, exemplar in enumerate(_items(point, "exemplars", "exemplars")):
                                where = (f"resourceMetrics[{i}].scopeMetrics[{j}].metrics[{k}].{data_name}"
                                         f".dataPoints[{p}].exemplars[{e}]")
                                _convert_ids(exemplar, where)


_ID_FIELDS = (("traceId", "trace_id", 16), ("spanId", "span_id", 8), ("parentSpanId", "parent_span_id", 8))


def _convert_ids(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        return
    for camel, snake, size in _ID_FIELDS:
        for key in (camel, snake):
            value = item.get(key)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise InvalidExportError(f"`{camel}` at {where} must be a hex string, got {value!r}.")
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise InvalidExportError(
                    f"`{camel}` at {where} is not hex: {value!r}. OTLP/JSON encodes trace and span ids as "
                    f"hex strings ({size * 2} hex digits), not base64."
                ) from None
            if len(raw) != size:
                raise InvalidExportError(
                    f"`{camel}` at {where} has {len(raw)} bytes ({value!r}); it must be {size} bytes "
                    f"({size * 2} hex digits)."
                )
            item[key] = base64.b64encode(raw).decode("ascii")


def export_response(signal: str, batch: Batch | None) -> Any:
    """Build the export response: an empty partial success, or the rejected count and message."""
    response = RESPONSE_TYPES[signal]()
    response.partial_success.SetInParent()
    if batch is not None and batch.rejected:
        setattr(response.partial_success, REJECTED_FIELDS[signal], batch.rejected)
        response.partial_success.error_message = batch.error_message
    return response


def response_json(response: Any) -> bytes:
    """Serialize a response message as OTLP/JSON (lowerCamelCase, int64 counts as JSON numbers)."""
    document = json_format.MessageToDict(response, always_print_fields_with_no_presence=False)
    partial = document.setdefault("partialSuccess", {})
    for key, value in list(partial.items()):
        if key.startswith("rejected"):
            partial[key] = int(value)
    return json.dumps(document, separators=(",", ":")).encode()


# --- values ------------------------------------------------------------------------------------------


def any_value(value: Any) -> Any:
    """Convert an OTLP AnyValue into a Python value: str, bool, int, float, bytes, list, dict or None."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in _SCALAR_VALUE_FIELDS:
        return getattr(value, kind)
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}


def attributes(key_values: Any) -> dict[str, Any]:
    """Convert repeated KeyValue into a dict; a later duplicate key wins.

    Keys are interned: stores hold millions of dicts with the same few keys.
    """
    result = {}
    for kv in key_values:
        value = kv.value
        kind = value.WhichOneof("value")
        result[intern(kv.key)] = getattr(value, kind) if kind in _SCALAR_VALUE_FIELDS else any_value(value)
    return result


def _hex_id(raw: bytes, size: int, name: str, owner: str) -> str | None:
    """Return the lowercase hex of an optional id, None when empty; wrong sizes invalidate the request."""
    if not raw:
        return None
    if len(raw) != size:
        raise InvalidExportError(
            f"`{name}` of {owner} has {len(raw)} bytes ({raw.hex()}); it must be {size} bytes "
            f"({size * 2} hex digits) or empty."
        )
    return raw.hex()


# --- spans -------------------------------------------------------------------------------------------


def flatten_spans(request: Any) -> Batch:
    """Flatten an ExportTraceServiceRequest into span columns.

    Spans with an all-zero trace or span id are rejected one by one. An id of the wrong length makes
    the whole request invalid, because the sender's encoder is broken rather than one item.
    """
    trace_ids: list[bytes] = []
    span_ids: list[bytes] = []
    parent_span_ids: list[bytes] = []
    names: list[str] = []
    kinds: list[int] = []
    services: list[tuple[Any, int]] = []
    instances: list[tuple[Any, int]] = []
    scopes: list[tuple[Any, int]] = []
    resources: list[tuple[Any, int]] = []
    starts: list[int] = []
    ends: list[int] = []
    status_codes: list[int] = []
    status_messages: list[str] = []
    span_attributes: list[dict[str, Any]] = []
    events: list[tuple[dict[str, Any], ...]] = []
    links: list[tuple[dict[str, Any], ...]] = []
    scalar_fields = _SCALAR_VALUE_FIELDS
    received = 0
    rejected: list[str] = []

    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get("service.name", _UNKNOWN_SERVICE)
        instance = resource.get("service.instance.id")
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            stored_before = len(names)
            for span in scope_spans.spans:
                received += 1
                trace_id = span.trace_id
                span_id = span.span_id
                if len(trace_id) != 16 or len(span_id) != 8:
                    _check_span_ids(span)
                if trace_id == _ZERO_TRACE_ID or span_id == _ZERO_SPAN_ID:
                    rejected.append(f"span {span.name!r} has an all-zero traceId or spanId")
                    continue

                parent = span.parent_span_id
                if parent and len(parent) != 8:
                    _hex_id(parent, 8, "parentSpanId", f"span {span.name!r}")
                kind = span.kind
                status = span.status
                code = status.code
                values = {}
                for kv in span.attributes:
                    value = kv.value
                    value_kind = value.WhichOneof("value")
                    values[intern(kv.key)] = (
                        getattr(value, value_kind) if value_kind in scalar_fields else any_value(value)
                    )

                trace_ids.append(trace_id)
                span_ids.append(span_id)
                parent_span_ids.append(parent or _ZERO_SPAN_ID)
                names.append(intern(span.name))
                # NOTE: enum values newer than this table (none exist today) are stored as code 0.
                kinds.append(kind if 0 <= kind < 6 else 0)
                starts.append(span.start_time_unix_nano)
                ends.append(span.end_time_unix_nano)
                status_codes.append(code if 0 <= code < 3 else 0)
                status_messages.append(status.message)
                span_attributes.append(values)
                # Tuples, so the many spans without events or links share the one empty tuple.
                events.append(tuple([_span_event(event) for event in span.events]) if span.events else ())
                links.append(tuple([_span_link(link, span.name) for link in span.links]) if span.links else ())

            stored = len(names) - stored_before
            if stored:
                services.append((service, stored))
                instances.append((instance, stored))
                scopes.append((scope, stored))
                resources.append((resource, stored))

    batch = Batch("spans", {
        "trace_id": b"".join(trace_ids), "span_id": b"".join(span_ids),
        "parent_span_id": b"".join(parent_span_ids), "name": names, "kind": bytes(kinds),
        "service_name": services, "service_instance_id": instances, "scope_name": scopes,
        "start_time": array("Q", starts).tobytes(), "end_time": array("Q", ends).tobytes(),
        "status_code": bytes(status_codes), "status_message": status_messages, "attributes": span_attributes,
        "resource_attributes": resources, "events": events, "links": links,
    }, received=received)
    for reason in rejected:
        batch.reject(reason)
    return batch


def _check_span_ids(span: Any) -> None:
    owner = f"span {span.name!r}"
    for name, raw, size in (("traceId", span.trace_id, 16), ("spanId", span.span_id, 8)):
        if len(raw) != size:
            raise InvalidExportError(
                f"`{name}` of {owner} has {len(raw)} bytes ({raw.hex() or 'empty'}); it must be {size} "
                f"bytes ({size * 2} hex digits)."
            )


def _span_event(event: Any) -> dict[str, Any]:
    return {"time_unix_nano": event.time_unix_nano, "name": event.name, "attributes": attributes(event.attributes)}


def _span_link(link: Any, span_name: str) -> dict[str, Any]:
    owner = f"a link of span {span_name!r}"
    return {
        "trace_id": _hex_id(link.trace_id, 16, "traceId", owner),
        "span_id": _hex_id(link.span_id, 8, "spanId", owner),
        "trace_state": link.trace_state,
        "attributes": attributes(link.attributes),
    }


# --- logs --------------------------------------------------------------------------------------------


def flatten_logs(request: Any) -> Batch:
    """Flatten an ExportLogsServiceRequest into log record columns.

    Trace and span ids are optional on log records, so empty and all-zero ids become missing values.
    """
    columns: dict[str, list[Any]] = {name: [] for name in LOG_COLUMNS}
    batch = Batch("logs", columns)
    times, observed, severity_numbers, severity_texts = (
        columns["time"], columns["observed_time"], columns["severity_number"], columns["severity_text"])
    bodies, services, instances, scopes = (
        columns["body"], columns["service_name"], columns["service_instance_id"], columns["scope_name"])
    trace_ids, span_ids, record_attributes, resource_attributes = (
        columns["trace_id"], columns["span_id"], columns["attributes"], columns["resource_attributes"])
    received = 0

    for resource_logs in request.resource_logs:
        resource = attributes(resource_logs.resource.attributes)
        service = resource.get("service.name", _UNKNOWN_SERVICE)
        instance = resource.get("service.instance.id")
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope.name
            for record in scope_logs.log_records:
                received += 1
                owner = f"log record {received - 1} of scope {scope!r}"
                trace_id = record.trace_id
                span_id = record.span_id
                times.append(record.time_unix_nano)
                observed.append(record.observed_time_unix_nano)
                severity_numbers.append(record.severity_number or None)
                severity_texts.append(record.severity_text or None)
                bodies.append(any_value(record.body))
                services.append(service)
                instances.append(instance)
                scopes.append(scope)
                if trace_id and len(trace_id) != 16:
                    _hex_id(trace_id, 16, "traceId", owner)
                if span_id and len(span_id) != 8:
                    _hex_id(span_id, 8, "spanId", owner)
                trace_ids.append(trace_id or _ZERO_TRACE_ID)
                span_ids.append(span_id or _ZERO_SPAN_ID)
                record_attributes.append(attributes(record.attributes))
                resource_attributes.append(resource)

    batch.received = received
    _encode_fixed_width(columns, ("trace_id", "span_id"), ("time", "observed_time"))
    return batch


def _encode_fixed_width(columns: dict[str, Any], ids: tuple[str, ...], times: tuple[str, ...]) -> None:
    """Pack id columns into one bytes object and time columns into uint64 nanoseconds (0 = missing)."""
    for name in ids:
        columns[name] = b"".join(columns[name])
    for name in times:
        columns[name] = array("Q", columns[name]).tobytes()


# --- metrics -----------------------------------------------------------------------------------------


def flatten_metrics(request: Any) -> Batch:
    """Flatten an ExportMetricsServiceRequest into one row per data point.

    Data points of a metric without a name are rejected, because nothing could select them later.
    """
    columns: dict[str, list[Any]] = {name: [] for name in METRIC_COLUMNS}
    batch = Batch("metrics", columns)
    received = 0

    for resource_metrics in request.resource_metrics:
        resource = attributes(resource_metrics.resource.attributes)
        context = {
            "service_name": resource.get("service.name", _UNKNOWN_SERVICE),
            "service_instance_id": resource.get("service.instance.id"),
            "resource_attributes": resource,
        }
        for scope_metrics in resource_metrics.scope_metrics:
            context["scope_name"] = scope_metrics.scope.name
            for metric in scope_metrics.metrics:
                received += _flatten_metric(metric, context, batch)

    batch.received = received
    _encode_fixed_width(columns, (), ("start_time", "time"))
    return batch


def _flatten_metric(metric: Any, context: dict[str, Any], batch: Batch) -> int:
    """Append the data points of one metric; return how many it had."""
    data_type = metric.WhichOneof("data")
    if data_type is None:
        return 0
    data = getattr(metric, data_type)
    points = data.data_points
    if not metric.name:
        for _ in points:
            batch.reject(f"a {data_type} metric has no name")
        return len(points)

    is_monotonic = data.is_monotonic if data_type == "sum" else None
    temporality = None
    if data_type in ("sum", "histogram", "exponential_histogram"):
        code = data.aggregation_temporality
        temporality = AGGREGATION_TEMPORALITY_NAMES[code] if 0 <= code < 3 else str(code)

    columns = batch.columns
    for point in points:
        row = dict.fromkeys(METRIC_COLUMNS)
        row.update(context)
        row["name"] = metric.name
        row["description"] = metric.description
        row["unit"] = metric.unit
        row["type"] = data_type
        row["attributes"] = attributes(point.attributes)
        row["start_time"] = point.start_time_unix_nano
        row["time"] = point.time_unix_nano
        row["is_monotonic"] = is_monotonic
        row["aggregation_temporality"] = temporality
        row["exemplars"] = [_exemplar(e, metric.name) for e in point.exemplars] if data_type != "summary" else []
        _POINT_READERS[data_type](point, row)
        for name in METRIC_COLUMNS:
            columns[name].append(row[name])
    return len(points)


def _number_point(point: Any, row: dict[str, Any]) -> None:
    if point.WhichOneof("value") == "as_int":
        row["value"] = float(point.as_int)
        row["value_int"] = point.as_int
    else:
        row["value"] = point.as_double


def _histogram_point(point: Any, row: dict[str, Any]) -> None:
    row["count"] = point.count
    row["sum"] = point.sum if point.HasField("sum") else None
    row["min"] = point.min if point.HasField("min") else None
    row["max"] = point.max if point.HasField("max") else None
    row["bucket_counts"] = list(point.bucket_counts)
    row["explicit_bounds"] = list(point.explicit_bounds)


def _exponential_histogram_point(point: Any, row: dict[str, Any]) -> None:
    row["count"] = point.count
    row["sum"] = point.sum if point.HasField("sum") else None
    row["min"] = point.min if point.HasField("min") else None
    row["max"] = point.max if point.HasField("max") else None
    row["exponential_buckets"] = {
        "scale": point.scale,
        "zero_count": point.zero_count,
        "zero_threshold": point.zero_threshold,
        "positive": {"offset": point.positive.offset, "bucket_counts": list(point.positive.bucket_counts)},
        "negative": {"offset": point.negative.offset, "bucket_counts": list(point.negative.bucket_counts)},
    }


def _summary_point(point: Any, row: dict[str, Any]) -> None:
    row["count"] = point.count
    row["sum"] = point.sum
    row["quantiles"] = [{"quantile": q.quantile, "value": q.value} for q in point.quantile_values]


_POINT_READERS = {
    "gauge": _number_point,
    "sum": _number_point,
    "histogram": _histogram_point,
    "exponential_histogram": _exponential_histogram_point,
    "summary": _summary_point,
}


def _exemplar(exemplar: Any, metric_name: str) -> dict[str, Any]:
    owner = f"an exemplar of metric {metric_name!r}"
    is_int = exemplar.WhichOneof("value") == "as_int"
    return {
        "time_unix_nano": exemplar.time_unix_nano,
        "value": exemplar.as_int if is_int else exemplar.as_double,
        "trace_id": _hex_id(exemplar.trace_id, 16, "traceId", owner),
        "span_id": _hex_id(exemplar.span_id, 8, "spanId", owner),
        "attributes": attributes(exemplar.filtered_attributes),
    }


FLATTENERS = {"spans": flatten_spans, "logs": flatten_logs, "metrics": flatten_metrics}


def decode(signal: str, body: bytes, encoding: str) -> Batch:
    """Parse and flatten one export request body; `encoding` is "protobuf" or "json"."""
    request = parse_json(signal, body) if encoding == "json" else parse_protobuf(signal, body)
    return FLATTENERS[signal](request)
