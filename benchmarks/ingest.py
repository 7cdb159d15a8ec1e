"""Benchmark OTLP span ingest against the decode-and-flatten ceiling measured in the same run.

    python benchmarks/ingest.py                  # 1,000,000 spans over gRPC and over HTTP/protobuf
    python benchmarks/ingest.py --spans 100000   # a quicker run

Export requests of 512 spans (about 8 attributes each, traces of 1 root and up to 7 children) are
serialized before the clock starts. Four sender processes then post them over gRPC, and in a second
round over HTTP/protobuf, to a collector in this process. The clock runs from the first send until
`collector.spans()` returns every span, so it includes one full build of the frame. The ceiling
decodes the same requests with the generated protobuf classes and flattens them into one row per
span (the collector's own flattening code), in a loop with no server. It runs twice after each
transport and the faster run counts. The ratio shows what the receivers, the store and the frame
build cost on top. The collector's CPU time per span is printed too, because the wall-clock figures
move with whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import multiprocessing
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

import psutil

from homunculy_nb.collector import Collector
from homunculy_nb.otlp import flatten_spans, parse_protobuf

TRACE_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
SERVICES = ("homunculy-app", "management-app", "llm", "chat-client")
ROUTES = ("/api/v1/agents/execute", "/api/v1/ws/chat", "/health", "/v1/chat/completions")


def build_request(index: int, size: int) -> bytes:
    """Serialize one ExportTraceServiceRequest of `size` spans; `index` seeds ids, names and times."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    def key_value(key: str, value: object) -> KeyValue:
        if isinstance(value, bool):
            return KeyValue(key=key, value=AnyValue(bool_value=value))
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        if isinstance(value, float):
            return KeyValue(key=key, value=AnyValue(double_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=str(value)))

    rng = random.Random(index)
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    service = SERVICES[index % len(SERVICES)]
    resource_spans.resource.attributes.extend([
        key_value("service.name", service), key_value("service.instance.id", f"{service}-{index % 3}"),
        key_value("telemetry.sdk.language", "python"),
    ])
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "opentelemetry.instrumentation.fastapi"
    start = 1_780_000_000_000_000_000 + index * 1_000_000_000

    written = 0
    while written < size:
        trace_id = rng.randbytes(16)
        span_count = min(size - written, rng.randint(1, 8))
        span_ids = [rng.randbytes(8) for _ in range(span_count)]
        for position in range(span_count):
            span = scope_spans.spans.add()
            span.trace_id = trace_id
            span.span_id = span_ids[position]
            if position:
                span.parent_span_id = span_ids[rng.randrange(position)]
            route = ROUTES[rng.randrange(len(ROUTES))]
            span.name = f"POST {route}" if position == 0 else f"SELECT homunculy.{rng.choice(('agents', 'threads'))}"
            span.kind = 2 if position == 0 else 3
            span.start_time_unix_nano = start + written * 10_000 + position * 1_000
            span.end_time_unix_nano = span.start_time_unix_nano + rng.randint(100_000, 50_000_000)
            span.attributes.extend([
                key_value("http.request.method", "POST"), key_value("http.route", route),
                key_value("http.response.status_code", 200 if rng.random() > 0.02 else 500),
                key_value("server.port", 8000), key_value("db.system", "postgresql"),
                key_value("user.id", f"user-{rng.randrange(1000)}"), key_value("cache.hit", rng.random() > 0.5),
                key_value("llm.temperature", 0.7),
            ])
            span.status.code = 2 if rng.random() < 0.02 else 1
            written += 1
    return request.SerializeToString()


def write_payloads(path: Path, payloads: list[bytes]) -> None:
    with path.open("wb") as stream:
        for payload in payloads:
            stream.write(struct.pack("<I", len(payload)))
            stream.write(payload)


def read_payloads(path: str, share: int, senders: int) -> list[bytes]:
    """Read every `senders`-th payload starting at `share`."""
    payloads = []
    with open(path, "rb") as stream:
        index = 0
        while header := stream.read(4):
            payload = stream.read(struct.unpack("<I", header)[0])
            if index % senders == share:
                payloads.append(payload)
            index += 1
    return payloads


def send(transport: str, endpoint: str, path: str, share: int, senders: int, ready: object, go: object) -> None:
    """Sender process: load this sender's payloads, report ready, wait for the start, post them all."""
    payloads = read_payloads(path, share, senders)
    if transport == "grpc":
        import grpc

        channel = grpc.insecure_channel(endpoint.removeprefix("http://"),
                                        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
        export = channel.unary_unary(TRACE_EXPORT_METHOD)
        ready.release()
        go.wait()
        for payload in payloads:
            export(payload, timeout=120)
        channel.close()
    else:
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        ready.release()
        go.wait()
        for payload in payloads:
            connection.request("POST", "/v1/traces", body=payload,
                               headers={"Content-Type": "application/x-protobuf"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"HTTP export failed with {response.status}")
        connection.close()


def run_ingest(transport: str, collector: Collector, path: str, total: int, senders: int) -> tuple[float, float]:
    """Send every payload with `senders` processes; return (seconds until spans() has all, spans() seconds)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Semaphore(0)
    go = context.Event()
    endpoint = collector.endpoints[transport]
    processes = [
        context.Process(target=send, args=(transport, endpoint, path, share, senders, ready, go))
        for share in range(senders)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.acquire()

    before = collector.stats().loc["spans", "accepted"]
    cpu_before = psutil.Process().cpu_times()
    started = time.perf_counter()
    go.set()
    while collector.stats().loc["spans", "accepted"] - before < total:
        if not any(process.is_alive() for process in processes) and \
                collector.stats().loc["spans", "accepted"] - before < total:
            time.sleep(0.5)
            if collector.stats().loc["spans", "accepted"] - before < total:
                raise SystemExit(f"Senders exited before all spans arrived: {collector.stats()}")
        time.sleep(0.02)
    frame_started = time.perf_counter()
    frame = collector.spans()
    finished = time.perf_counter()
    if len(frame) != total:
        raise SystemExit(f"spans() returned {len(frame)} rows, expected {total}")

    cpu_after = psutil.Process().cpu_times()
    cpu_seconds = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    print(f"  {transport}: collector process CPU {cpu_seconds / total * 1e6:.1f} us per span "
          f"({cpu_seconds:.1f} s, wall {finished - started:.1f} s)", flush=True)
    for process in processes:
        process.join()
    return finished - started, finished - frame_started


def run_ceiling(payloads: list[bytes]) -> float:
    """Decode and flatten every payload in a loop with no server; return the seconds taken.

    The rows are kept until the clock stops, as any store must keep them. Discarding each batch would
    let the allocator reuse the same memory, which no receiver that stores data can do.
    """
    kept = []
    started = time.perf_counter()
    for payload in payloads:
        kept.append(flatten_spans(parse_protobuf("spans", payload)))
    elapsed = time.perf_counter() - started
    del kept
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans to send per transport (default 1000000)")
    parser.add_argument("--batch", type=int, default=512, help="spans per export request (default 512)")
    parser.add_argument("--senders", type=int, default=4, help="concurrent sender processes (default 4)")
    parser.add_argument("--transports", default="grpc,http", help="comma-separated: grpc, http (default both)")
    options = parser.parse_args()
    batches = -(-options.spans // options.batch)
    total = batches * options.batch

    print(f"Building {batches} export requests of {options.batch} spans ({total} spans)...", flush=True)
    payloads = [build_request(index, options.batch) for index in range(batches)]
    payload_bytes = sum(len(p) for p in payloads)
    print(f"  {payload_bytes / total:.0f} bytes per span serialized; {os.cpu_count()} CPUs", flush=True)

    process = psutil.Process()
    results = {}
    with tempfile.TemporaryDirectory(prefix="homunculy-nb-bench-") as directory:
        path = Path(directory) / "payloads.bin"
        write_payloads(path, payloads)
        for transport in options.transports.split(","):
            collector = Collector(grpc_port=0, http_port=0, limits={"spans": total}).start()
            rss_before = process.memory_info().rss
            elapsed, frame_seconds = run_ingest(transport, collector, str(path), total, options.senders)
            rss_after = process.memory_info().rss
            collector.stop()
            collector.clear()
            del collector
            gc.collect()

            # The ceiling runs twice right after each transport and the faster run counts, so a burst of
            # other work on the machine cannot make the ceiling look low.
            ceiling_seconds = min(run_ceiling(payloads), run_ceiling(payloads))
            gc.collect()
            results[transport] = (ceiling_seconds, elapsed, frame_seconds, (rss_after - rss_before) / total)

    print()
    for transport, (ceiling_seconds, elapsed, frame_seconds, bytes_per_span) in results.items():
        ceiling_rate = total / ceiling_seconds
        rate = total / elapsed
        print(f"{transport}: decode-and-flatten ceiling (no server) {ceiling_rate:,.0f} spans/s "
              f"({ceiling_seconds:.2f} s)")
        print(f"{transport}: ingest with {options.senders} senders, end to end {rate:,.0f} spans/s ({elapsed:.2f} s) "
              f"= {rate / ceiling_rate:.2f}x the ceiling")
        # Later runs reuse memory the allocator kept from earlier ones, so only the first RSS figure counts.
        memory = f"{bytes_per_span:,.0f} bytes" if transport == next(iter(results)) else "see the first run"
        print(f"{transport}: spans() for {total:,} spans {frame_seconds:.2f} s; RSS growth per stored span {memory}")
    print("targets: >= 0.6x the ceiling, >= 50,000 spans/s end to end, spans() for 1,000,000 spans < 2 s")


if __name__ == "__main__":
    sys.exit(main())
