"""Forking children while the collector serves gRPC exports, as `stack.up()` does in a notebook."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

# Three exporter processes keep the collector's gRPC threads busy while this process forks children
# with `user=`, which rules out vfork, so gRPC's fork handlers (when on) run in every child.
SCRIPT = textwrap.dedent("""
    import pwd, subprocess, sys, time
    import homunculy_nb
    from homunculy_nb import Collector

    collector = Collector(grpc_port=0, http_port=0).start()
    sender = '''
    import sys, time
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[1], insecure=True)))
    tracer = provider.get_tracer("fork-test")
    end = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < end:
        with tracer.start_as_current_span("busy"):
            pass
    '''
    senders = [subprocess.Popen([sys.executable, "-c", sender, collector.endpoints["grpc"], "12"])
               for _ in range(3)]
    time.sleep(2)
    user = pwd.getpwuid(65534).pw_name
    codes = [subprocess.run(["true"], user=user).returncode for _ in range(150)]
    for process in senders:
        process.wait()
    collector.stop()
    print("exit codes", sorted(set(codes)))
""")


def test_children_forked_during_grpc_exports_survive():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "exit codes [0]"
    assert "fork_posix" not in result.stderr
