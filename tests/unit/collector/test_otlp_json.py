"""OTLP/JSON and protobuf decoding rules, on handwritten request bodies."""

from __future__ import annotations

import base64
import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from homunculy_nb.otlp import InvalidExportError, decode, export_response, response_json
from homunculy_nb.telemetry import build_frame

TRACE_ID = "5B8EFFF798038103D269B633813FC60C"
SPAN_ID = "EEE19B7EC3C1B174"


def span_json(**overrides):
    span = {"traceId": TRACE_ID, "spanId": SPAN_ID, "name": "GET /health", "kind": 2,
            "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000250000000"}
    span.update(overrides)
    return span


def traces_body(*spans, resource=None):
    resource_spans = {"scopeSpans": [{"scope": {"name": "tests"}, "spans": list(spans)}]}
    if resource is not None:
        resource_spans["resource"] = resource
    return json.dumps({"resourceSpans": [resource_spans]}).encode()


def spans_frame(body: bytes):
    batch = decode("spans", body, "json")
    return batch, build_frame("spans", batch.columns, batch.size)


def test_upper_case_hex_ids_stored_lowercase():
    _, frame = spans_frame(traces_body(span_json(parentSpanId="00F067AA0BA902B7")))

    assert frame["trace_id"][0] == TRACE_ID.lower()
    assert frame["span_id"][0] == SPAN_ID.lower()
    assert frame["parent_span_id"][0] == "00f067aa0ba902b7"


def test_base64_trace_id_rejected_naming_field():
    encoded = base64.b64encode(bytes.fromhex(TRACE_ID)).decode()

    with pytest.raises(InvalidExportError, match="traceId") as caught:
        decode("spans", traces_body(span_json(traceId=encoded)), "json")

    assert "hex" in str(caught.value)


def test_short_span_id_rejected_naming_field():
    with pytest.raises(InvalidExportError, match="spanId"):
        decode("spans", traces_body(span_json(spanId="abcd")), "json")


@pytest.mark.parametrize("raw", ["9007199254740993", 9007199254740993, "-42", -42])
def test_int_value_string_or_number_exact(raw):
    body = traces_body(span_json(attributes=[{"key": "big", "value": {"intValue": raw}}]))

    _, frame = spans_frame(body)

    assert frame["attributes"][0] == {"big": int(raw)}


def test_times_as_strings_or_numbers_exact():
    _, frame = spans_frame(traces_body(span_json(startTimeUnixNano=1700000000000000001,
                                                 endTimeUnixNano="1700000000000000003")))

    assert frame["start_time"][0].value == 1700000000000000001
    assert frame["end_time"][0].value == 1700000000000000003
    assert frame["duration_ms"][0] == 2e-6


@pytest.mark.parametrize(("kind", "status", "expected_kind", "expected_status"), [
    (3, 2, "CLIENT", "ERROR"),
    ("SPAN_KIND_CLIENT", "STATUS_CODE_ERROR", "CLIENT", "ERROR"),
    ("SPAN_KIND_PRODUCER", 1, "PRODUCER", "OK"),
])
def test_enums_by_name_or_number(kind, status, expected_kind, expected_status):
    _, frame = spans_frame(traces_body(span_json(kind=kind, status={"code": status, "message": "m"})))

    assert frame["kind"][0] == expected_kind
    assert frame["status_code"][0] == expected_status
    assert frame["status_message"][0] == "m"


def test_unknown_fields_ignored_everywhere():
    document = {
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}, "extra": 1}],
                         "futureField": True},
            "scopeSpans": [{"scope": {"name": "s", "newThing": []},
                            "spans": [span_json(somethingNew={"a": 1})], "unknown": "x"}],
            "unexpected": 3,
        }],
        "topLevelUnknown": {"nested": [1, 2]},
    }

    _, frame = spans_frame(json.dumps(document).encode())

    assert frame["service_name"][0] == "svc"
    assert len(frame) == 1


@pytest.mark.parametrize("resource", [None, {}, {"attributes": []}])
def test_missing_or_empty_resource(resource):
    _, frame = spans_frame(traces_body(span_json(), resource=resource))

    assert frame["service_name"][0] == "unknown_service"
    assert frame["resource_attributes"][0] == {}


def test_nested_attribute_values():
    value = {"kvlistValue": {"values": [
        {"key": "list", "value": {"arrayValue": {"values": [{"intValue": "1"}, {"stringValue": "two"},
                                                             {"doubleValue": 3.5}, {"boolValue": False}]}}},
        {"key": "raw", "value": {"bytesValue": base64.b64encode(b"\x00\x01").decode()}},
        {"key": "empty", "value": {}},
    ]}}

    _, frame = spans_frame(traces_body(span_json(attributes=[{"key": "nested", "value": value}])))

    assert frame["attributes"][0] == {"nested": {"list": [1, "two", 3.5, False], "raw": b"\x00\x01", "empty": None}}


def test_partial_success_for_zero_trace_id():
    bad = span_json(traceId="0" * 32, name="bad span")
    good = span_json(spanId="1111111111111111")

    batch, frame = spans_frame(traces_body(span_json(), bad, good))
    response = export_response("spans", batch)

    assert batch.rejected == 1
    assert len(frame) == 2
    assert response.partial_success.rejected_spans == 1
    assert "bad span" in response.partial_success.error_message


def test_full_success_has_empty_partial_success():
    batch, _ = spans_frame(traces_body(span_json()))

    document = json.loads(response_json(export_response("spans", batch)))

    assert document == {"partialSuccess": {}}


def test_partial_success_json_counts_are_numbers():
    batch, _ = spans_frame(traces_body(span_json(spanId="0" * 16)))

    document = json.loads(response_json(export_response("spans", batch)))

    assert document["partialSuccess"]["rejectedSpans"] == 1


def test_snake_case_keys_accepted():
    document = {"resource_spans": [{"scope_spans": [{"spans": [
        {"trace_id": TRACE_ID, "span_id": SPAN_ID, "name": "snake", "start_time_unix_nano": "5"}]}]}]}

    _, frame = spans_frame(json.dumps(document).encode())

    assert frame["trace_id"][0] == TRACE_ID.lower()
    assert frame["name"][0] == "snake"


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe", b'{"resourceSpans": 5}'])
def test_undecodable_json_rejected(body):
    with pytest.raises(InvalidExportError):
        decode("spans", body, "json")


def test_protobuf_wrong_trace_id_length_rejected():
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = b"\x01" * 8
    span.span_id = b"\x02" * 8
    span.name = "short"

    with pytest.raises(InvalidExportError, match="traceId"):
        decode("spans", request.SerializeToString(), "protobuf")


def test_protobuf_truncated_rejected():
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add()
    span.trace_id = b"\x01" * 16
    span.span_id = b"\x02" * 8
    span.name = "truncated"
    body = request.SerializeToString()

    with pytest.raises(InvalidExportError, match="ExportTraceServiceRequest"):
        decode("spans", body[:-5], "protobuf")


def test_log_record_json():
    document = {"resourceLogs": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "agent"}}]},
        "scopeLogs": [{"scope": {"name": "app"}, "logRecords": [
            {"timeUnixNano": "1700000000000000000", "severityNumber": "SEVERITY_NUMBER_ERROR",
             "severityText": "ERROR", "body": {"stringValue": "boom"}, "traceId": TRACE_ID, "spanId": SPAN_ID,
             "attributes": [{"key": "code", "value": {"intValue": 7}}]},
            {"observedTimeUnixNano": 1700000000000000001, "body": {"kvlistValue": {"values": [
                {"key": "event", "value": {"stringValue": "login"}}]}}},
        ]}]}]}

    batch = decode("logs", json.dumps(document).encode(), "json")
    frame = build_frame("logs", batch.columns, batch.size)

    assert frame["severity_number"].isna().tolist() == [False, True]
    assert frame["severity_number"][0] == 17
    assert frame["body"].tolist() == ["boom", {"event": "login"}]
    assert frame["trace_id"][0] == TRACE_ID.lower()
    assert frame["trace_id"].isna().tolist() == [False, True]
    assert frame["time"].isna().tolist() == [False, True]
    assert frame["observed_time"][1].value == 1700000000000000001
    assert frame["attributes"][0] == {"code": 7}


def test_metric_json_exemplar_and_types():
    document = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "requests", "sum": {"aggregationTemporality": "AGGREGATION_TEMPORALITY_DELTA", "isMonotonic": True,
                                     "dataPoints": [{"asInt": "9007199254740993", "timeUnixNano": "10",
                                                     "exemplars": [{"asDouble": 1.5, "traceId": TRACE_ID,
                                                                    "spanId": SPAN_ID}]}]}},
        {"name": "latency", "summary": {"dataPoints": [{"count": "4", "sum": 10.0, "quantileValues": [
            {"quantile": 0.5, "value": 2.0}]}]}},
        {"name": "", "gauge": {"dataPoints": [{"asDouble": 1.0}]}},
    ]}]}]}

    batch = decode("metrics", json.dumps(document).encode(), "json")
    frame = build_frame("metrics", batch.columns, batch.size)

    assert batch.rejected == 1
    assert frame["value_int"][0] == 9007199254740993
    assert frame["aggregation_temporality"][0] == "DELTA"
    assert frame["exemplars"][0][0]["trace_id"] == TRACE_ID.lower()
    assert frame["exemplars"][0][0]["span_id"] == SPAN_ID.lower()
    assert frame["type"].tolist() == ["sum", "summary"]
    assert frame["count"][1] == 4
    assert frame["quantiles"][1] == [{"quantile": 0.5, "value": 2.0}]
