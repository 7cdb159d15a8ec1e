"""A real Collector on free ports, loaded over OTLP/HTTP JSON with a fixed set of traces, logs and metrics.

Times are offsets in milliseconds from `t0`, a whole minute about two minutes before the session started,
so the figures' values can be computed by hand from the tables below.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import pandas as pd
import pytest

from homunculy_nb.collector import Collector

APP, LLM, CLIENT_SERVICE = "homunculy-app", "homunculy-llm", "chat-client"
KIND = {"INTERNAL": 1, "SERVER": 2, "CLIENT": 3}

T1 = "0af7651916cd43dd8448eb211c80319c"   # a chat turn across three services, with a TTS error
T2 = "1bf7651916cd43dd8448eb211c80319d"   # a health check
T3 = "2cf7651916cd43dd8448eb211c80319e"   # a failing LLM call
T4 = "3df7651916cd43dd8448eb211c80319f"   # a call to a second model

# trace, span id, parent, name, kind, service, start ms, end ms, error message or None, attributes
SPANS = [
    (T1, "00000000000000a1", "", "chat turn", "INTERNAL", CLIENT_SERVICE, 0, 1000, None, {}),
    (T1, "00000000000000a2", "00000000000000a1", "chat_request", "SERVER", APP, 10, 990, None,
     {"http.route": "/api/v1/ws/chat"}),
    (T1, "00000000000000b1", "00000000000000a2", "SELECT homunculy", "CLIENT", APP, 20, 60, None,
     {"db.system": "postgresql", "db.name": "homunculy"}),
    (T1, "00000000000000c1", "00000000000000a2", "chat gpt-4o-mini", "CLIENT", APP, 70, 600, None,
     {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
      "gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 80}),
    (T1, "00000000000000d1", "00000000000000c1", "POST /v1/chat/completions", "SERVER", LLM, 80, 590, None, {}),
    (T1, "00000000000000e1", "00000000000000a2", "tts.synthesize", "INTERNAL", APP, 300, 900, "voice not found",
     {"tts.provider": "local"}),
    (T1, "00000000000000f1", "00000000000000a2", "INSERT messages", "CLIENT", APP, 910, 950, None,
     {"db.system": "postgresql", "db.name": "homunculy"}),
    (T2, "00000000000002a1", "", "GET /health", "SERVER", APP, 2000, 2005, None, {"http.route": "/health"}),
    (T3, "00000000000003a1", "", "chat_request", "SERVER", APP, 3000, 3200, None, {}),
    (T3, "00000000000003c1", "00000000000003a1", "chat gpt-4o-mini", "CLIENT", APP, 3010, 3190, "upstream 500",
     {"gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 50, "gen_ai.usage.output_tokens": 0}),
    (T3, "00000000000003d1", "00000000000003c1", "POST /v1/chat/completions", "SERVER", LLM, 3020, 3180,
     "model overloaded", {}),
    (T4, "00000000000004a1", "", "chat_request", "SERVER", APP, 4000, 4100, None, {}),
    (T4, "00000000000004c1", "00000000000004a1", "chat tiny-model", "CLIENT", APP, 4010, 4090, None,
     {"gen_ai.request.model": "tiny-model", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5}),
    (T4, "00000000000004d1", "00000000000004c1", "POST /v1/chat/completions", "SERVER", LLM, 4015, 4085, None, {}),
]

# service, trace, span, offset ms, severity number, severity text, body
LOGS = [
    (APP, T1, "00000000000000a2", 15, 9, "INFO", "chat request received"),
    (APP, T1, "00000000000000e1", 899, 13, "WARN", "tts voice missing"),
    (APP, T3, "00000000000003c1", 3190, 17, "ERROR", "llm call failed"),
    (APP, "", "", 0, 9, "INFO", "startup complete"),
    (LLM, "", "", 1, 5, "DEBUG", "model loaded"),
]


@dataclass
class Telemetry:
    """The loaded collector, the time origin, and the names and ids the tables above use."""

    collector: Collector
    t0: pd.Timestamp
    APP = APP
    LLM = LLM
    CLIENT_SERVICE = CLIENT_SERVICE
    T1 = T1
    T2 = T2
    T3 = T3
    T4 = T4


def _nanos(t0: pd.Timestamp, offset_ms: float) -> str:
    return str(t0.value + int(offset_ms * 1_000_000))


def _attributes(values: dict) -> list[dict]:
    encoded = []
    for key, value in values.items():
        if isinstance(value, bool):
            encoded.append({"key": key, "value": {"boolValue": value}})
        elif isinstance(value, int):
            encoded.append({"key": key, "value": {"intValue": str(value)}})
        elif isinstance(value, float):
            encoded.append({"key": key, "value": {"doubleValue": value}})
        else:
            encoded.append({"key": key, "value": {"stringValue": str(value)}})
    return encoded


def _resource(service: str) -> dict:
    return {"attributes": _attributes({"service.name": service, "service.instance.id": f"{service}-1"})}


def traces_body(t0: pd.Timestamp) -> dict:
    resource_spans = []
    for service in (CLIENT_SERVICE, APP, LLM):
        spans = []
        for trace, span, parent, name, kind, owner, start, end, error, attributes in SPANS:
            if owner != service:
                continue
            spans.append({
                "traceId": trace, "spanId": span, "parentSpanId": parent, "name": name, "kind": KIND[kind],
                "startTimeUnixNano": _nanos(t0, start), "endTimeUnixNano": _nanos(t0, end),
                "attributes": _attributes(attributes),
                "status": {"code": 2, "message": error} if error else {},
                "events": [{"timeUnixNano": _nanos(t0, end), "name": "exception",
                            "attributes": _attributes({"exception.message": error})}] if error else [],
            })
        resource_spans.append({"resource": _resource(service),
                               "scopeSpans": [{"scope": {"name": "views-tests"}, "spans": spans}]})
    return {"resourceSpans": resource_spans}


def logs_body(t0: pd.Timestamp) -> dict:
    resource_logs = []
    for service in (APP, LLM):
        records = [{
            "timeUnixNano": _nanos(t0, offset), "observedTimeUnixNano": _nanos(t0, offset),
            "severityNumber": number, "severityText": text, "body": {"stringValue": body},
            "traceId": trace, "spanId": span,
        } for owner, trace, span, offset, number, text, body in LOGS if owner == service]
        resource_logs.append({"resource": _resource(service),
                              "scopeLogs": [{"scope": {"name": "views-tests"}, "logRecords": records}]})
    return {"resourceLogs": resource_logs}


def metrics_body(t0: pd.Timestamp) -> dict:
    start = _nanos(t0, 0)
    histogram_points = [
        {"startTimeUnixNano": start, "timeUnixNano": _nanos(t0, 10_000), "count": "10", "sum": 300.0,
         "min": 12.0, "max": 90.0, "bucketCounts": ["0", "4", "4", "2", "0"], "explicitBounds": [10, 20, 50, 100]},
        {"startTimeUnixNano": start, "timeUnixNano": _nanos(t0, 20_000), "count": "20", "sum": 1000.0,
         "min": 12.0, "max": 99.0, "bucketCounts": ["0", "4", "8", "8", "0"], "explicitBounds": [10, 20, 50, 100]},
    ]
    metrics = [
        {"name": "homunculy.time_to_first_chunk", "unit": "ms", "description": "Time to the first text chunk",
         "histogram": {"aggregationTemporality": 2, "dataPoints": histogram_points}},
        {"name": "process.memory.usage", "unit": "By",
         "gauge": {"dataPoints": [{"timeUnixNano": _nanos(t0, 10_000), "asDouble": 100.0},
                                  {"timeUnixNano": _nanos(t0, 20_000), "asDouble": 120.0}]}},
        {"name": "http.server.requests", "unit": "{request}",
         "sum": {"aggregationTemporality": 2, "isMonotonic": True,
                 "dataPoints": [{"startTimeUnixNano": start, "timeUnixNano": _nanos(t0, 10_000), "asInt": "10"},
                                {"startTimeUnixNano": start, "timeUnixNano": _nanos(t0, 20_000), "asInt": "30"}]}},
    ]
    return {"resourceMetrics": [{"resource": _resource(APP),
                                 "scopeMetrics": [{"scope": {"name": "views-tests"}, "metrics": metrics}]}]}


def send(collector: Collector, path: str, body: dict) -> None:
    response = httpx.post(collector.endpoints["http"] + path, json=body, timeout=30)
    response.raise_for_status()
    assert response.json().get("partialSuccess", {}).get("rejectedSpans", 0) in (0, "0")


@pytest.fixture(scope="session")
def telemetry():
    t0 = pd.Timestamp.now(tz="UTC").floor("min") - pd.Timedelta(minutes=2)
    collector = Collector(grpc_port=0, http_port=0).start()
    try:
        send(collector, "/v1/traces", traces_body(t0))
        send(collector, "/v1/logs", logs_body(t0))
        send(collector, "/v1/metrics", metrics_body(t0))
        yield Telemetry(collector, t0)
    finally:
        collector.stop()
