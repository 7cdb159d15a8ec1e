"""TraceExplorer, LogViewer and MetricsExplorer on the fixed telemetry: filters, selection and live updates."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest

from homunculy_nb.collector import Collector
from homunculy_nb.views import LogViewer, MetricsExplorer, TraceExplorer


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def listed_traces(explorer: TraceExplorer) -> set[str]:
    return {value for _, value in explorer.table.options}


@pytest.fixture
def explorer(telemetry):
    widget = TraceExplorer(telemetry.collector, live=False)
    yield widget
    widget.close()


def test_trace_explorer_lists_all_traces(explorer, telemetry):
    assert listed_traces(explorer) == {telemetry.T1, telemetry.T2, telemetry.T3, telemetry.T4}
    assert explorer.table.options[0][1] == telemetry.T4
    assert list(explorer.service.options) == ["(all services)", telemetry.CLIENT_SERVICE, telemetry.APP,
                                              telemetry.LLM]


def test_trace_explorer_filters(explorer, telemetry):
    explorer.errors_only.value = True
    assert listed_traces(explorer) == {telemetry.T1, telemetry.T3}

    explorer.errors_only.value = False
    explorer.service.value = telemetry.LLM
    assert listed_traces(explorer) == {telemetry.T1, telemetry.T3, telemetry.T4}

    explorer.service.value = "(all services)"
    explorer.min_duration.value = 150
    assert listed_traces(explorer) == {telemetry.T1, telemetry.T3}

    explorer.min_duration.value = 0
    explorer.name.value = "health"
    assert listed_traces(explorer) == {telemetry.T2}


def post_span(collector: Collector, trace_id: str, start: pd.Timestamp, service: str = "late-service") -> None:
    body = {"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": trace_id[:16], "name": "late span",
                                   "kind": 2, "startTimeUnixNano": str(start.value),
                                   "endTimeUnixNano": str(start.value + 2_000_000)}]}],
    }]}
    httpx.post(collector.endpoints["http"] + "/v1/traces", json=body, timeout=30).raise_for_status()


def test_trace_explorer_time_window():
    collector = Collector(grpc_port=0, http_port=0).start()
    try:
        now = pd.Timestamp.now(tz="UTC")
        post_span(collector, "6a" * 16, now - pd.Timedelta(hours=2))
        post_span(collector, "6b" * 16, now)
        explorer = TraceExplorer(collector, live=False)

        assert listed_traces(explorer) == {"6a" * 16, "6b" * 16}
        explorer.window.value = "1h"
        assert listed_traces(explorer) == {"6b" * 16}
        explorer.window.value = "1D"
        assert listed_traces(explorer) == {"6a" * 16, "6b" * 16}
        explorer.close()
    finally:
        collector.stop()


def test_trace_explorer_selection_draws_waterfall_and_logs(explorer, telemetry):
    explorer.table.value = telemetry.T1

    assert explorer.trace_id == telemetry.T1
    bars = [trace for trace in explorer.figure.data if trace.name == telemetry.APP][0]
    assert sorted(float(width) for width in bars.x) == [40.0, 40.0, 530.0, 600.0, 980.0]
    assert "chat request received" in explorer.logs.value
    assert "tts voice missing" in explorer.logs.value
    assert "llm call failed" not in explorer.logs.value


def test_trace_explorer_span_details(explorer, telemetry):
    explorer.select_trace(telemetry.T1)
    explorer.select_span("00000000000000e1")

    assert "tts.synthesize" in explorer.details.value
    assert "voice not found" in explorer.details.value
    assert "tts.provider" in explorer.details.value
    assert "service.instance.id" in explorer.details.value
    assert "exception" in explorer.details.value


def test_trace_explorer_unknown_span(explorer, telemetry):
    explorer.select_trace(telemetry.T2)
    with pytest.raises(ValueError, match="not in the open trace"):
        explorer.select_span("00000000000000e1")


def test_trace_explorer_follows_new_spans():
    collector = Collector(grpc_port=0, http_port=0).start()
    explorer = TraceExplorer(collector, interval=0.1)
    try:
        assert explorer.table.options == ()
        trace_id = "4e" * 16
        post_span(collector, trace_id, pd.Timestamp.now(tz="UTC"))

        wait_for(lambda: listed_traces(explorer) == {trace_id})
        wait_for(lambda: "late-service" in explorer.service.options)
    finally:
        explorer.close()
        collector.stop()


def test_trace_explorer_repr_is_short(explorer):
    assert repr(explorer).startswith("<TraceExplorer traces=4")


def test_log_viewer_filters(telemetry):
    viewer = LogViewer(telemetry.collector, live=False)
    try:
        assert len(viewer.table.options) == 5
        viewer.severity.value = 13
        assert [label.split()[1] for label, _ in viewer.table.options] == ["WARN", "ERROR"]
        viewer.severity.value = None
        viewer.text.value = "tts"
        assert len(viewer.table.options) == 1
        viewer.text.value = ""
        viewer.trace.value = telemetry.T1.upper()
        assert [label.split()[-1] for label, _ in viewer.table.options] == ["received", "missing"]
        viewer.trace.value = ""
        viewer.service.value = telemetry.LLM
        assert len(viewer.table.options) == 1
    finally:
        viewer.close()


def test_log_viewer_opens_trace_of_record(telemetry):
    viewer = LogViewer(telemetry.collector, live=False)
    try:
        labels = [label for label, _ in viewer.table.options]
        viewer.table.value = next(value for label, value in viewer.table.options if "llm call failed" in label)
        assert viewer.trace_id == telemetry.T3
        assert {trace.name for trace in viewer.figure.data} >= {telemetry.APP, telemetry.LLM}

        viewer.table.value = next(value for label, value in viewer.table.options if "startup" in label)
        assert viewer.trace_id is None
        assert "no trace id" in viewer._message.value
        assert len(labels) == 5
    finally:
        viewer.close()


def test_log_viewer_reports_invalid_trace_id(telemetry):
    viewer = LogViewer(telemetry.collector, live=False)
    try:
        viewer.trace.value = "not-hex"
        assert "not-hex" in viewer._message.value
    finally:
        viewer.close()


def test_metrics_explorer_picks_metric(telemetry):
    explorer = MetricsExplorer(telemetry.collector, live=False)
    try:
        assert list(explorer.metric.options) == ["homunculy.time_to_first_chunk", "http.server.requests",
                                                 "process.memory.usage"]
        explorer.metric.value = "homunculy.time_to_first_chunk"
        lines = {trace.name: list(trace.y) for trace in explorer.figure.data}
        assert lines[f"{telemetry.APP} p50"] == pytest.approx([27.5, 50 + 50 / 6])

        explorer.metric.value = "http.server.requests"
        explorer.rate.value = True
        assert list(explorer.figure.data[0].y) == [2.0]
    finally:
        explorer.close()


def test_views_public_names():
    from homunculy_nb import views

    assert sorted(views.__all__) == [
        "ChatPanel", "LogViewer", "MetricsExplorer", "ResourceDashboard", "TraceExplorer", "latency",
        "latency_histogram", "llm_usage", "metric_chart", "service_map", "time_breakdown", "turn_timings",
        "waterfall"]
    for name in views.__all__:
        assert callable(getattr(views, name))
