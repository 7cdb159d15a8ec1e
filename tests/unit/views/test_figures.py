"""The figure functions on the fixed telemetry of conftest.py: each value checked against the hand-built data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from homunculy_nb.views import figures
from homunculy_nb.views.figures.llm_usage import llm_calls
from homunculy_nb.views.figures.metric_chart import bucket_quantile, exponential_to_explicit, histogram_percentiles
from homunculy_nb.views.figures.service_map import call_graph
from homunculy_nb.views.figures.time_breakdown import CATEGORIES, span_categories, time_breakdown_table
from homunculy_nb.views.figures.waterfall import critical_path, tree_order


def bars_by_row(figure: go.Figure, exclude: str = "critical path") -> dict[int, tuple[str, float, float]]:
    """Map each waterfall row to (service, offset ms, width ms)."""
    rows = {}
    for trace in figure.data:
        if trace.name == exclude:
            continue
        for row, base, width in zip(trace.y, trace.base, trace.x):
            rows[int(row)] = (trace.name, float(base), float(width))
    return rows


def test_waterfall_bar_order_and_widths(telemetry):
    figure = figures.waterfall(telemetry.collector, telemetry.T1)

    labels = [label.replace("\u00a0", " ") for label in figure.layout.yaxis.ticktext]
    assert labels == ["chat turn", "  chat_request", "    SELECT homunculy", "    chat gpt-4o-mini",
                      "      POST /v1/chat/completions", "    tts.synthesize", "    INSERT messages"]
    rows = bars_by_row(figure)
    assert rows[0] == (telemetry.CLIENT_SERVICE, 0.0, 1000.0)
    assert rows[1] == (telemetry.APP, 10.0, 980.0)
    assert rows[3] == (telemetry.APP, 70.0, 530.0)
    assert rows[4] == (telemetry.LLM, 80.0, 510.0)
    assert rows[5] == (telemetry.APP, 300.0, 600.0)
    assert rows[6] == (telemetry.APP, 910.0, 40.0)


def test_waterfall_marks_error_span(telemetry):
    figure = figures.waterfall(telemetry.collector, telemetry.T1)

    app = next(trace for trace in figure.data if trace.name == telemetry.APP)
    widths = dict(zip(app.y, app.marker.line.width))
    texts = dict(zip(app.y, app.text))
    assert widths[5] == 3
    assert texts[5].startswith("✕")
    assert widths[1] == 0
    assert "voice not found" in app.customdata[list(app.y).index(5)][1]


def test_waterfall_hover_shows_self_time(telemetry):
    figure = figures.waterfall(telemetry.collector, telemetry.T1)

    app = next(trace for trace in figure.data if trace.name == telemetry.APP)
    hover = app.customdata[list(app.y).index(1)][1]
    assert "self: 70.0 ms" in hover
    assert "http.route: /api/v1/ws/chat" in hover


def test_waterfall_critical_path_bars(telemetry):
    figure = figures.waterfall(telemetry.collector, telemetry.T1)

    path = next(trace for trace in figure.data if trace.name == "critical path")
    segments = sorted(zip(path.base, path.x, path.y))
    assert [(float(b), float(w), int(r)) for b, w, r in segments] == [
        (0.0, 10.0, 0), (10.0, 10.0, 1), (20.0, 40.0, 2), (60.0, 240.0, 1), (300.0, 600.0, 5),
        (900.0, 10.0, 1), (910.0, 40.0, 6), (950.0, 40.0, 1), (990.0, 10.0, 0)]
    assert float(np.sum(path.x)) == 1000.0


def test_critical_path_skips_overlapped_child(telemetry):
    path = critical_path(telemetry.collector.spans(trace_id=telemetry.T1))

    assert "00000000000000c1" not in set(path["span_id"])
    assert "00000000000000d1" not in set(path["span_id"])


def test_tree_order_matches_collector(telemetry):
    spans = telemetry.collector.spans(trace_id=telemetry.T1).sample(frac=1, random_state=3)
    ours = tree_order(spans)
    theirs = telemetry.collector.trace(telemetry.T1)

    assert list(ours["span_id"]) == list(theirs["span_id"])
    assert list(ours["depth"]) == list(theirs["depth"])
    assert list(ours["self_time_ms"]) == list(theirs["self_time_ms"])


def test_waterfall_unknown_trace_is_empty_figure(telemetry):
    figure = figures.waterfall(telemetry.collector, "ff" * 16)

    assert len(figure.data) == 0
    assert "No spans" in figure.layout.annotations[0].text


def test_waterfall_rejects_non_source():
    with pytest.raises(TypeError, match="open_run"):
        figures.waterfall(pd.DataFrame(), "0af7651916cd43dd8448eb211c80319c")


def test_call_graph_edges(telemetry):
    nodes, edges = call_graph(telemetry.collector.spans())

    table = {(edge.source, edge.target): edge for edge in edges.itertuples()}
    assert set(table) == {(telemetry.CLIENT_SERVICE, telemetry.APP), (telemetry.APP, telemetry.LLM),
                          (telemetry.APP, "postgresql homunculy")}
    assert table[(telemetry.APP, telemetry.LLM)].calls == 3
    assert table[(telemetry.APP, telemetry.LLM)].errors == 1
    assert table[(telemetry.APP, telemetry.LLM)].p95_ms == pytest.approx(np.percentile([510, 160, 70], 95))
    assert table[(telemetry.CLIENT_SERVICE, telemetry.APP)].calls == 1
    assert table[(telemetry.APP, "postgresql homunculy")].calls == 2
    assert dict(zip(nodes["service"], nodes["level"])) == {
        telemetry.CLIENT_SERVICE: 0, telemetry.APP: 1, telemetry.LLM: 2, "postgresql homunculy": 2}


def test_service_map_labels(telemetry):
    figure = figures.service_map(telemetry.collector)

    labels = next(trace for trace in figure.data if trace.name == "calls").text
    assert sorted(labels) == sorted([
        "1 call · 0% errors · p95 980 ms",
        "3 calls · 33% errors · p95 475 ms",
        "2 calls · 0% errors · p95 40.0 ms",
    ])
    assert len(figure.layout.annotations) == 3
    services = next(trace for trace in figure.data if trace.name == "services")
    assert set(services.text) == {telemetry.CLIENT_SERVICE, telemetry.APP, telemetry.LLM,
                                  "postgresql homunculy"}


def test_service_map_since_excludes_older(telemetry):
    figure = figures.service_map(telemetry.collector, since=telemetry.t0 + pd.Timedelta(seconds=3))

    labels = next(trace for trace in figure.data if trace.name == "calls").text
    assert sorted(labels) == ["2 calls · 50% errors · p95 156 ms"]


def test_latency_percentiles_by_service(telemetry):
    figure = figures.latency(telemetry.collector, by="service", window="1h")

    lines = {trace.name: trace for trace in figure.data}
    llm_durations = [510, 160, 70]
    assert list(lines[f"{telemetry.LLM} p50"].y) == [np.percentile(llm_durations, 50)]
    assert list(lines[f"{telemetry.LLM} p95"].y) == pytest.approx([np.percentile(llm_durations, 95)])
    assert list(lines[f"{telemetry.CLIENT_SERVICE} p99"].y) == [1000.0]
    assert list(lines[f"{telemetry.APP} p50"].customdata) == [10]


def test_latency_rejects_unknown_grouping(telemetry):
    with pytest.raises(ValueError, match="by='name' or by='service'"):
        figures.latency(telemetry.collector, by="route")


def test_latency_histogram_counts_and_percentiles(telemetry):
    figure = figures.latency_histogram(telemetry.collector, by="service")

    assert sum(int(np.sum(trace.y)) for trace in figure.data) == 14
    llm = next(trace for trace in figure.data if trace.name == telemetry.LLM)
    assert int(np.sum(llm.y)) == 3
    durations = telemetry.collector.spans()["duration_ms"].to_numpy()
    p95 = next(shape for shape in figure.layout.shapes if shape.name == "p95")
    assert p95.x0 == pytest.approx(np.percentile(durations, 95))


def test_bucket_quantile_interpolates():
    bounds, counts = [10, 20, 50, 100], [0, 4, 4, 2, 0]

    assert bucket_quantile(bounds, counts, 0.5) == pytest.approx(27.5)
    assert bucket_quantile(bounds, counts, 0.95) == pytest.approx(87.5)
    assert bucket_quantile(bounds, counts, 0.99, maximum=90.0) == pytest.approx(90.0)
    assert bucket_quantile(bounds, [3, 0, 0, 0, 0], 0.5) == pytest.approx(5.0)
    assert bucket_quantile(bounds, [0, 0, 0, 0, 2], 0.5) == 100.0
    assert bucket_quantile(bounds, [0, 0, 0, 0, 2], 0.5, maximum=180.0) == pytest.approx(140.0)
    assert np.isnan(bucket_quantile(bounds, [0] * 5, 0.5))


def test_bucket_quantile_rejects_bad_shape():
    with pytest.raises(ValueError, match="needs 5 bucket counts"):
        bucket_quantile([10, 20, 50, 100], [1, 2], 0.5)


def test_histogram_percentiles_per_interval(telemetry):
    points = telemetry.collector.metrics(name="homunculy.time_to_first_chunk")
    table = histogram_percentiles(points, (50, 95, 99))

    assert list(table["count"]) == [10, 10]
    assert list(table["p50"]) == pytest.approx([27.5, 50 + 50 / 6])
    assert list(table["p95"]) == pytest.approx([87.5, 50 + 50 * 5.5 / 6])
    assert list(table["p99"]) == pytest.approx([90.0, 50 + 50 * 5.9 / 6])
    assert list(table["mean"]) == pytest.approx([30.0, 70.0])


def test_metric_chart_histogram_lines(telemetry):
    figure = figures.metric_chart(telemetry.collector, "homunculy.time_to_first_chunk")

    lines = {trace.name: list(trace.y) for trace in figure.data}
    assert lines[f"{telemetry.APP} p50"] == pytest.approx([27.5, 50 + 50 / 6])
    assert "histogram" in figure.layout.title.text


def test_metric_chart_gauge_and_rate(telemetry):
    gauge = figures.metric_chart(telemetry.collector, "process.memory.usage")
    rate = figures.metric_chart(telemetry.collector, "http.server.requests", rate=True)

    assert list(gauge.data[0].y) == [100.0, 120.0]
    assert list(rate.data[0].y) == [2.0]
    assert rate.layout.yaxis.title.text == "{request}/s"


def test_metric_chart_unknown_metric(telemetry):
    figure = figures.metric_chart(telemetry.collector, "no.such.metric")

    assert "No points for metric no.such.metric" in figure.layout.annotations[0].text


def test_exponential_buckets_to_explicit():
    bounds, counts = exponential_to_explicit({
        "scale": 0, "zero_count": 1, "zero_threshold": 0.0,
        "positive": {"offset": 1, "bucket_counts": [2, 3]}, "negative": {"offset": 0, "bucket_counts": []},
    })

    assert bounds == [0.0, 0.0, 2.0, 4.0, 8.0]
    assert counts == [0.0, 1.0, 0.0, 2.0, 3.0, 0.0]
    assert bucket_quantile(bounds, counts, 0.5) == pytest.approx(4 + 4 * (3 - 3) / 3)


def test_llm_calls_count_outermost_span(telemetry):
    calls = llm_calls(telemetry.collector.spans())

    assert sorted(calls["span_id"]) == ["00000000000000c1", "00000000000003c1", "00000000000004c1"]
    assert calls["input_tokens"].sum() == 180
    assert calls["output_tokens"].sum() == 85


def test_llm_usage_per_trace_and_model(telemetry):
    figure = figures.llm_usage(telemetry.collector)

    inputs = [trace for trace in figure.data if trace.name == "input tokens"]
    per_trace = dict(zip(inputs[0].x, inputs[0].y))
    per_model = dict(zip(inputs[1].x, inputs[1].y))
    assert per_trace == {telemetry.T1[:8]: 120.0, telemetry.T3[:8]: 50.0, telemetry.T4[:8]: 10.0}
    assert per_model == {"gpt-4o-mini": 170.0, "tiny-model": 10.0}
    times = [trace for trace in figure.data if trace.name == "LLM time"]
    assert dict(zip(times[1].x, times[1].y)) == {"gpt-4o-mini": 710.0, "tiny-model": 80.0}


def test_time_breakdown_categories(telemetry):
    table = time_breakdown_table(telemetry.collector.spans()).set_index("trace_id")

    turn = table.loc[telemetry.T1]
    assert turn["LLM"] == 0.0
    assert turn["TTS"] == 600.0
    assert turn["database"] == 80.0
    assert turn["compute"] == 320.0
    assert turn[list(CATEGORIES)].sum() == turn["duration_ms"]
    failed = table.loc[telemetry.T3]
    assert failed["LLM"] == 180.0
    assert failed["compute"] == 20.0
    assert table.loc[telemetry.T2, "compute"] == 5.0


def test_time_breakdown_llm_server_inherits(telemetry):
    categories = span_categories(telemetry.collector.spans(trace_id=telemetry.T1))

    assert categories["00000000000000d1"] == "LLM"
    assert categories["00000000000000c1"] == "LLM"
    assert categories["00000000000000e1"] == "TTS"
    assert categories["00000000000000a2"] == "compute"


def test_time_breakdown_figure(telemetry):
    figure = figures.time_breakdown(telemetry.collector, [telemetry.T1, telemetry.T3])

    llm = next(trace for trace in figure.data if trace.name == "LLM")
    assert list(llm.x) == [0.0, 180.0]


def test_turn_timings_from_frame():
    turns = pd.DataFrame({
        "started_at": pd.to_datetime(["2026-01-01T00:00:02Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:03Z"]),
        "time_to_first_chunk_ms": [30.0, 10.0, 20.0],
        "time_to_first_audio_ms": [None, None, None],
        "duration_ms": [300.0, 100.0, 200.0],
        "trace_id": ["b", "a", "c"],
    })
    figure = figures.turn_timings(turns)

    lines = {trace.name: trace for trace in figure.data if trace.type == "scatter"}
    assert list(lines["first text chunk"].y) == [10.0, 30.0, 20.0]
    assert list(lines["first text chunk"].customdata) == ["a", "b", "c"]
    assert "first audio chunk" not in lines
    boxes = {trace.name for trace in figure.data if trace.type == "box"}
    assert boxes == {"first text chunk", "turn duration"}


def test_turn_timings_rejects_frame_without_timings():
    with pytest.raises(ValueError, match="none of the timing columns"):
        figures.turn_timings(pd.DataFrame({"text": ["hi"]}))


def test_figures_render_to_html(telemetry, tmp_path):
    path = tmp_path / "waterfall.html"
    figures.waterfall(telemetry.collector, telemetry.T1).write_html(path, include_plotlyjs="cdn")

    text = path.read_text()
    assert "chat_request" in text
    assert "Plotly.newPlot" in text


def test_service_colors_distinct_and_stable():
    from homunculy_nb.views._common import PALETTE, service_color

    names = [f"color-test-{index}" for index in range(len(PALETTE))]
    colors = [service_color(name) for name in names]

    assert len(set(colors)) == len(PALETTE)
    assert [service_color(name) for name in names] == colors
