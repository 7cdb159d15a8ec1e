"""The telemetry store: eviction, cached frames, trace queries, callbacks and saved runs."""

from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.otlp import flatten_logs, flatten_spans
from homunculy_nb.run import open_run
from homunculy_nb.telemetry import TelemetryStore, TraceNotFoundError

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def trace_request(spans, service="svc", instance="i-1"):
    """Build an ExportTraceServiceRequest from (trace, span, parent, name, start_ms, end_ms, error) tuples."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend([
        KeyValue(key="service.name", value=AnyValue(string_value=service)),
        KeyValue(key="service.instance.id", value=AnyValue(string_value=instance)),
    ])
    scope = resource_spans.scope_spans.add()
    scope.scope.name = "tests"
    for trace, span_id, parent, name, start_ms, end_ms, error in spans:
        span = scope.spans.add()
        span.trace_id = bytes([trace]) * 16
        span.span_id = bytes([span_id]) * 8
        if parent:
            span.parent_span_id = bytes([parent]) * 8
        span.name = name
        span.start_time_unix_nano = T0 + start_ms * MS
        span.end_time_unix_nano = T0 + end_ms * MS
        span.status.code = 2 if error else 1
        span.attributes.append(KeyValue(key="seq", value=AnyValue(int_value=span_id)))
    return request


def store_with(*requests, limits=None):
    store = TelemetryStore(limits)
    for request in requests:
        store.append(flatten_spans(request))
    return store


def trace_hex(trace: int) -> str:
    return (bytes([trace]) * 16).hex()


def test_eviction_keeps_newest_and_counts():
    store = store_with(*[trace_request([(1, i, 0, f"s{i}", i, i + 1, False)]) for i in range(1, 11)],
                       limits={"spans": 4})

    spans = store.spans()
    stats = store.stats()

    assert spans["name"].tolist() == ["s7", "s8", "s9", "s10"]
    assert stats.loc["spans", "evicted"] == 6
    assert stats.loc["spans", "accepted"] == 10
    assert stats.loc["spans", "stored"] == 4


def test_eviction_inside_one_large_batch():
    store = store_with(trace_request([(1, i, 0, f"s{i}", i, i + 1, False) for i in range(1, 8)]),
                       limits={"spans": 3})

    assert store.spans()["name"].tolist() == ["s5", "s6", "s7"]
    assert store.spans()["attributes"].tolist() == [{"seq": 5}, {"seq": 6}, {"seq": 7}]
    assert store.spans()["service_name"].tolist() == ["svc"] * 3


def test_cached_frame_extends_with_new_batches():
    store = store_with(trace_request([(1, 1, 0, "a", 0, 5, False)]), limits={"spans": 3})
    first = store.spans()
    store.append(flatten_spans(trace_request([(1, 2, 1, "b", 1, 2, False), (1, 3, 1, "c", 2, 3, False)])))
    second = store.spans()
    store.append(flatten_spans(trace_request([(2, 4, 0, "d", 4, 9, True)])))
    third = store.spans()
    rebuilt = TelemetryStore({"spans": 3})
    for request in (trace_request([(1, 2, 1, "b", 1, 2, False), (1, 3, 1, "c", 2, 3, False)]),
                    trace_request([(2, 4, 0, "d", 4, 9, True)])):
        rebuilt.append(flatten_spans(request))

    assert len(first) == 1
    assert second["name"].tolist() == ["a", "b", "c"]
    assert third["name"].tolist() == ["b", "c", "d"]
    assert store.tables["spans"].frame() is store.tables["spans"].frame()
    pd.testing.assert_frame_equal(third, rebuilt.spans())


def test_new_column_stays_out_of_cache():
    store = store_with(trace_request([(1, 1, 0, "a", 0, 5, False)]))

    spans = store.spans()
    spans["mine"] = 1

    assert "mine" not in store.spans().columns


def test_frame_dtypes():
    spans = store_with(trace_request([(1, 1, 0, "a", 0, 5, False)])).spans()

    assert str(spans["start_time"].dtype) == "datetime64[ns, UTC]"
    assert spans["duration_ms"].dtype == np.float64
    assert spans["trace_id"].dtype == "str"
    assert spans["parent_span_id"].isna().all()


def test_span_filters():
    store = store_with(
        trace_request([(1, 1, 0, "GET /", 0, 100, False), (1, 2, 1, "SELECT", 10, 20, True)], service="api"),
        trace_request([(2, 3, 0, "POST /", 200, 210, False)], service="web"),
    )

    assert store.spans(service="web")["name"].tolist() == ["POST /"]
    assert store.spans(service=["api", "web"]).shape[0] == 3
    assert store.spans(errors_only=True)["name"].tolist() == ["SELECT"]
    assert store.spans(min_duration_ms=50)["name"].tolist() == ["GET /"]
    assert store.spans(trace_id=trace_hex(1).upper()).shape[0] == 2
    assert store.spans(name="SELECT")["span_id"].tolist() == [(bytes([2]) * 8).hex()]
    assert store.spans(since=pd.Timestamp(T0 + 150 * MS, tz="UTC"))["name"].tolist() == ["POST /"]
    assert store.spans(until=pd.Timestamp(T0 + 5 * MS, unit="ns").tz_localize(None))["name"].tolist() == ["GET /"]


def test_bad_filter_values_named():
    store = store_with()

    with pytest.raises(ConfigurationError, match="not 32 hex digits"):
        store.spans(trace_id="xyz")
    with pytest.raises(ConfigurationError, match="since"):
        store.spans(since="not a time")
    with pytest.raises(ConfigurationError, match="Severity 'LOUD'"):
        store.logs(severity="LOUD")


def test_traces_summary():
    store = store_with(
        trace_request([(1, 2, 1, "SELECT", 10, 30, True), (1, 1, 0, "GET /", 0, 100, False)], service="api"),
        trace_request([(1, 3, 2, "render", 40, 150, False)], service="web"),
        trace_request([(2, 4, 9, "orphan child", 500, 510, False)], service="web"),
    )

    traces = store.traces().set_index("trace_id")
    first = traces.loc[trace_hex(1)]

    assert first["root_name"] == "GET /"
    assert first["root_service"] == "api"
    assert first["span_count"] == 3
    assert first["error_count"] == 1
    assert first["services"] == ["api", "web"]
    assert first["duration_ms"] == 150.0
    assert traces.loc[trace_hex(2), "root_name"] == "orphan child"
    assert store.traces(errors_only=True)["trace_id"].tolist() == [trace_hex(1)]
    assert store.traces(service="api")["trace_id"].tolist() == [trace_hex(1)]
    assert store.traces(min_duration_ms=100)["trace_id"].tolist() == [trace_hex(1)]


def test_traces_empty_store():
    traces = TelemetryStore().traces()

    assert traces.empty
    assert list(traces.columns) == ["trace_id", "root_service", "root_name", "start_time", "duration_ms",
                                    "span_count", "error_count", "services"]


def test_trace_tree_order_depth_self_time():
    store = store_with(trace_request([
        (1, 3, 1, "second child", 50, 90, False),
        (1, 1, 0, "root", 0, 100, False),
        (1, 2, 1, "first child", 10, 40, False),
        (1, 4, 2, "grandchild", 20, 60, False),
        (1, 5, 1, "overlapping child", 30, 45, False),
    ]))

    tree = store.trace(trace_hex(1))

    assert tree["name"].tolist() == ["root", "first child", "grandchild", "overlapping child", "second child"]
    assert tree["depth"].tolist() == [0, 1, 2, 1, 1]
    # root: 100 minus the union of [10,40], [30,45], [50,90] = 100 - 75
    assert tree["self_time_ms"].tolist() == [25.0, 10.0, 40.0, 15.0, 40.0]


def test_trace_unknown_id_raises():
    store = store_with(trace_request([(1, 1, 0, "root", 0, 100, False)]))

    with pytest.raises(TraceNotFoundError, match=trace_hex(7)):
        store.trace(trace_hex(7))


def test_on_receive_gets_batches_and_survives_errors():
    store = TelemetryStore()
    received = []
    done = threading.Event()

    def failing(signal, frame):
        raise RuntimeError("view bug")

    def recording(signal, frame):
        received.append((signal, frame["name"].tolist()))
        if len(received) == 2:
            done.set()

    store.on_receive(failing, signals="spans")
    unsubscribe = store.on_receive(recording, signals=["spans"])
    store.append(flatten_spans(trace_request([(1, 1, 0, "a", 0, 1, False)])))
    store.append(flatten_spans(trace_request([(1, 2, 0, "b", 0, 1, False)])))

    assert done.wait(10)
    assert received == [("spans", ["a"]), ("spans", ["b"])]
    unsubscribe()
    store.close()


def test_on_receive_rejects_unknown_signal():
    with pytest.raises(ConfigurationError, match="traces"):
        TelemetryStore().on_receive(lambda signal, frame: None, signals=["traces"])


def test_clear_keeps_counts():
    store = store_with(trace_request([(1, 1, 0, "a", 0, 1, False)]))
    store.spans()

    store.clear()

    assert store.spans().empty
    assert store.stats().loc["spans", "accepted"] == 1
    assert store.stats().loc["spans", "stored"] == 0


def log_request():
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="agent")))
    scope = resource_logs.scope_logs.add()
    for number, text, body in ((9, "INFO", "started"), (13, "WARN", "slow query"), (17, "ERROR", "failed: db")):
        record = scope.log_records.add()
        record.time_unix_nano = T0 + number
        record.severity_number = number
        record.severity_text = text
        record.body.string_value = body
    return request


def test_log_filters():
    store = TelemetryStore()
    store.append(flatten_logs(log_request()))

    assert store.logs(severity="warn")["body"].tolist() == ["slow query", "failed: db"]
    assert store.logs(severity=17)["body"].tolist() == ["failed: db"]
    assert store.logs(contains="db")["body"].tolist() == ["failed: db"]
    assert store.logs(since=pd.Timestamp(T0 + 13, unit="ns", tz="UTC")).shape[0] == 2
    assert store.logs(service="nobody").empty


def test_saved_run_round_trips_exactly(tmp_path):
    request = trace_request([(1, 1, 0, "root", 0, 100, False), (1, 2, 1, "child", 10, 20, True)])
    span = request.resource_spans[0].scope_spans[0].spans[0]
    nested = AnyValue()
    inner = nested.kvlist_value.values.add()
    inner.key = "deep"
    inner.value.array_value.values.add().bytes_value = b"\x00\xff"
    inner.value.array_value.values.add().double_value = math.inf
    inner.value.array_value.values.add().int_value = 9007199254740993
    span.attributes.append(KeyValue(key="nested", value=nested))
    span.attributes.append(KeyValue(key="nan", value=AnyValue(double_value=math.nan)))
    event = span.events.add()
    event.name = "retry"
    event.time_unix_nano = T0 + 5
    link = span.links.add()
    link.trace_id = b"\x07" * 16
    link.span_id = b"\x08" * 8
    store = store_with(request)
    store.append(flatten_logs(log_request()))

    store.save(tmp_path / "run")
    run = open_run(tmp_path / "run")
    loaded_root = run.spans()["attributes"][0]

    assert loaded_root["nested"] == {"deep": [b"\x00\xff", math.inf, 9007199254740993]}
    assert math.isnan(loaded_root["nan"])
    pd.testing.assert_frame_equal(run.spans().drop(columns="attributes"), store.spans().drop(columns="attributes"))
    pd.testing.assert_frame_equal(run.logs(), store.logs())
    pd.testing.assert_frame_equal(run.metrics(), store.metrics())
    pd.testing.assert_frame_equal(run.traces(), store.traces())
    pd.testing.assert_frame_equal(run.stats(), store.stats())
    assert run.spans()["links"][0] == ({"trace_id": "07" * 16, "span_id": "08" * 8, "trace_state": "",
                                        "attributes": {}},)


def test_open_run_rejects_other_directory(tmp_path):
    with pytest.raises(ConfigurationError, match="manifest.json"):
        open_run(tmp_path)


def test_many_polls_keep_frame_equal_to_rebuild():
    store = TelemetryStore()
    for index in range(1, 81):
        store.append(flatten_spans(trace_request([(1, index, 0, f"s{index}", index, index + 1, False)])))
        polled = store.spans()
    rebuilt = store_with(*[trace_request([(1, i, 0, f"s{i}", i, i + 1, False)]) for i in range(1, 81)]).spans()

    assert polled["name"].array.__arrow_array__().num_chunks <= 64
    pd.testing.assert_frame_equal(polled, rebuilt)
