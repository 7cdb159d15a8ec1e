"""The real OpenTelemetry SDK exporters (gRPC and HTTP/protobuf) against a live collector."""

from __future__ import annotations

import pandas as pd
import pytest

START_NS = 1_790_000_000_123_456_789
pytestmark = pytest.mark.integration


@pytest.fixture(params=["grpc", "http"])
def sent(request, collector, sdk_sender, wait_until):
    ids = sdk_sender(request.param, collector.endpoints[request.param])
    wait_until(lambda: collector.stats().loc["metrics", "accepted"] >= 3
               and collector.stats().loc["logs", "accepted"] >= 1)
    return request.param, ids, collector


def test_spans_hold_sent_values(sent):
    protocol, ids, collector = sent
    spans = collector.spans(trace_id=ids["trace_id"])
    by_name = spans.set_index("name")

    assert len(spans) == 3
    root = by_name.loc["POST /checkout"]
    assert root["span_id"] == ids["root_span_id"]
    assert pd.isna(root["parent_span_id"])
    assert root["kind"] == "SERVER"
    assert root["service_name"] == f"sdk-{protocol}"
    assert root["service_instance_id"] == "instance-1"
    assert root["scope_name"] == "sdk-sender"
    assert root["start_time"] == pd.Timestamp(START_NS, unit="ns", tz="UTC")
    assert root["duration_ms"] == 25.0
    assert root["attributes"] == {"http.route": "/checkout", "order.count": 3, "ratio": 0.25, "flag": True,
                                  "tags": ["a", "b"]}
    assert root["resource_attributes"]["deployment.environment"] == "test"


def test_child_span_links_and_status(sent):
    _, ids, collector = sent
    child = collector.spans(name="SELECT orders").iloc[0]

    assert child["trace_id"] == ids["trace_id"]
    assert child["span_id"] == ids["child_span_id"]
    assert child["parent_span_id"] == ids["root_span_id"]
    assert child["kind"] == "CLIENT"
    assert child["duration_ms"] == 12.345
    assert child["status_code"] == "ERROR"
    assert child["status_message"] == "deadlock detected"
    assert child["events"] == ({"time_unix_nano": START_NS + 2_000_000, "name": "retry",
                                "attributes": {"attempt": 2}},)


def test_trace_tree_and_summary(sent):
    protocol, ids, collector = sent
    tree = collector.trace(ids["trace_id"].upper())
    summary = collector.traces().set_index("trace_id").loc[ids["trace_id"]]

    assert tree["name"].iloc[0] == "POST /checkout"
    assert tree["depth"].tolist() == [0, 1, 1]
    assert summary["root_name"] == "POST /checkout"
    assert summary["span_count"] == 3
    assert summary["error_count"] == 1
    assert summary["services"] == [f"sdk-{protocol}"]
    assert summary["duration_ms"] == 25.0


def test_log_record_linked_to_span(sent):
    protocol, ids, collector = sent
    logs = collector.logs(service=f"sdk-{protocol}")
    record = logs.iloc[0]

    assert len(logs) == 1
    assert record["body"] == "payment declined for order-7"
    assert record["severity_text"] == "WARN"
    assert record["severity_number"] == 13
    assert record["trace_id"] == ids["trace_id"]
    assert record["span_id"] == ids["logging_span_id"]
    assert len(collector.logs(severity="ERROR")) == 0
    assert len(collector.logs(contains="declined")) == 1


def test_metric_points(sent):
    protocol, _, collector = sent
    # force_flush and shutdown both export the cumulative points; the last export is the final state.
    metrics = collector.metrics(service=f"sdk-{protocol}").drop_duplicates("name", keep="last").set_index("name")

    orders = metrics.loc["orders"]
    assert orders["type"] == "sum"
    assert orders["value"] == 7.0
    assert orders["value_int"] == 7
    assert orders["is_monotonic"]
    assert orders["aggregation_temporality"] == "CUMULATIVE"
    assert orders["attributes"] == {"region": "eu"}
    assert orders["description"] == "Orders placed"

    latency = metrics.loc["latency_ms"]
    assert latency["type"] == "histogram"
    assert latency["count"] == 3
    assert latency["sum"] == 145.0
    assert latency["min"] == 5.0
    assert latency["max"] == 120.0
    assert sum(latency["bucket_counts"]) == 3
    assert len(latency["bucket_counts"]) == len(latency["explicit_bounds"]) + 1
    assert latency["unit"] == "ms"

    gauge = metrics.loc["queue_depth"]
    assert gauge["type"] == "gauge"
    assert gauge["value_int"] == 42
    assert gauge["attributes"] == {"queue": "email"}


def test_saved_run_equals_live_frames(sent, tmp_path):
    from homunculy_nb.run import open_run

    _, ids, collector = sent
    collector.save(tmp_path / "run")
    run = open_run(tmp_path / "run")

    pd.testing.assert_frame_equal(run.spans(), collector.spans())
    pd.testing.assert_frame_equal(run.logs(), collector.logs())
    pd.testing.assert_frame_equal(run.metrics(), collector.metrics())
    pd.testing.assert_frame_equal(run.traces(), collector.traces())
    pd.testing.assert_frame_equal(run.trace(ids["trace_id"]), collector.trace(ids["trace_id"]))
    pd.testing.assert_frame_equal(run.stats(), collector.stats())


def test_api_key_accepted_from_sdk(sdk_sender, wait_until):
    from homunculy_nb.collector import Collector

    with Collector(grpc_port=0, http_port=0, api_key="s3cret-key") as keyed:
        for protocol in ("grpc", "http"):
            sdk_sender(protocol, keyed.endpoints[protocol], api_key="s3cret-key")
        wait_until(lambda: keyed.stats().loc["spans", "accepted"] == 6)

        assert keyed.stats().loc["spans", "accepted"] == 6
        assert "s3cret-key" not in repr(keyed)


def test_otlp_environment_points_sdk_here(tmp_path, wait_until):
    import subprocess
    import sys

    from homunculy_nb.collector import Collector

    code = ("from opentelemetry.sdk.trace import TracerProvider\n"
            "from opentelemetry.sdk.trace.export import SimpleSpanProcessor\n"
            "from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter\n"
            "provider = TracerProvider()\n"
            "provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))\n"
            "provider.get_tracer('env').start_span('from environment').end()\n"
            "provider.shutdown()\n")
    with Collector(grpc_port=None, http_port=0, api_key="k/ey=1") as keyed:
        environment = keyed.otlp_environment("http/protobuf")
        done = subprocess.run([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin", **environment,
                                                                  "OTEL_SERVICE_NAME": "from-env"},
                              capture_output=True, text=True, timeout=120)
        wait_until(lambda: keyed.stats().loc["spans", "accepted"] == 1)

        assert done.returncode == 0, done.stderr
        assert environment["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert keyed.spans()["service_name"].tolist() == ["from-env"]
