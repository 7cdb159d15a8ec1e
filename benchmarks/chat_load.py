"""Benchmark the chat load driver against a bare `websockets` loop replaying the same turns in the same run.

    python benchmarks/chat_load.py                      # 200 sessions x 5 turns against the reference agent
    python benchmarks/chat_load.py --sessions 50 --turns 2 --rounds 1
    python benchmarks/chat_load.py --test-server        # the scripted test server instead of the agent

The reference agent runs as a uvicorn process with its local LLM service and a throwaway PostgreSQL
cluster, all on 127.0.0.1 free ports. Each round runs the bare loop and then `run_sessions` (the
order alternates between rounds), every session connected at once, with fresh user ids per run so
conversation history grows alike. The bare loop does the protocol's minimum: open, wait for
`connection_status`, send each `chat_request` (with a random `traceparent`, as the driver's requests
carry one), parse frames until `complete`, close. The driver
also builds turns, decodes audio, times every frame and creates a client span per turn (not
exported unless `--collector`). Overhead is the bare loop's throughput divided by the driver's, from
the sum of both's rounds; the target is at most 1.15 with zero errors. When the agent is the
bottleneck that ratio mostly shows the agent, so the client process's CPU time per turn is printed
for both loops as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from homunculy_nb.chat import DEFAULT_CONFIGURATION, run_sessions, summarize  # noqa: E402
from homunculy_nb.chat_load import DEFAULT_MESSAGES  # noqa: E402

TARGET_RATIO = 1.15


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin(name: str) -> str | None:
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / name).exists():
            return str(directory / name)
    return shutil.which(name)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """Run a throwaway PostgreSQL cluster and yield the URI of its migrated `homunculy` database."""
    initdb, pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL is not installed; run `apt-get install postgresql`")
    base = Path(tempfile.mkdtemp(prefix="homunculy-chat-bench-pg-"))
    as_user = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
    port, data = free_port(), base / "data"
    try:
        subprocess.run([*as_user, initdb, "-D", str(data), "-U", "bench", "--auth=trust", "--no-sync"],
                       check=True, capture_output=True)
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400"
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "server.log"), "-w",
                        "start"], check=True, capture_output=True)
        import psycopg

        with psycopg.connect(f"postgresql://bench@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "homunculy"')
        uri = f"postgresql://bench@127.0.0.1:{port}/homunculy"
        changelog = REPO_ROOT / "homunculy_nb" / "services" / "agent" / "changelog" / "changelog.xml"
        subprocess.run([sys.executable, "-m", "homunculy_nb.migrations", str(changelog)], check=True,
                       capture_output=True, env={**os.environ, "DATABASE_URI": uri, "PYTHONPATH": str(REPO_ROOT)})
        yield uri
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def service(app: str, env: dict[str, str], log_dir: Path) -> Iterator[str]:
    """Run `app` under uvicorn until the block ends; yield its base URL once /health returns 200."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    service_name = app.split(":")[0].rsplit(".", 1)[-1]
    log = open(log_dir / f"{service_name}.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "LOGGING_LEVEL": "WARNING", **env},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{app} exited with {process.returncode}; see {log.name}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{app} was not healthy within 60 s; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        # SIGTERM first so uvicorn closes its connections, then kill if it hangs.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.contextmanager
def reference_agent(otlp_http: str | None) -> Iterator[str]:
    """Run PostgreSQL, the local LLM and the agent; yield the agent's chat WebSocket URL."""
    log_dir = Path(tempfile.mkdtemp(prefix="homunculy-chat-bench-logs-"))
    telemetry = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"} \
        if otlp_http else {}
    try:
        with postgres() as database, \
                service("homunculy_nb.services.llm:app", {"OTEL_SERVICE_NAME": "llm"}, log_dir) as llm, \
                service("homunculy_nb.services.agent:app", {
                    "DATABASE_URI": database, "LLM_OPENAI_BASE_URL": f"{llm}/v1", "LLM_OPENAI_API_KEY": "bench",
                    "TTS_LOCAL_SYNTHESIZER": "tone", "OTEL_SERVICE_NAME": "homunculy-app", **telemetry,
                }, log_dir) as agent:
            yield agent.replace("http://", "ws://") + "/api/v1/ws/chat"
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


@contextlib.contextmanager
def scripted_server() -> Iterator[str]:
    """Run the scripted test server in its own process; yield its chat URL."""
    script = REPO_ROOT / "tests" / "unit" / "chat" / "agent_server.py"
    process = subprocess.Popen([sys.executable, str(script), "0.005"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[1])
        yield f"ws://127.0.0.1:{port}/api/v1/ws/chat"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def traceparent() -> str:
    """Return a random sampled W3C `traceparent`, as the driver sends, without the OpenTelemetry SDK."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


async def bare_session(url: str, user_id: str, messages: list[str], ttfc: list[float]) -> int:
    """Replay one session's turns with nothing but `websockets`; return how many turns completed.

    The requests match the driver's byte for byte in shape, `traceparent` included, because the agent
    stores a non-empty `context` with each turn and that write is part of the server's work per turn.
    """
    from websockets.asyncio.client import connect

    completed = 0
    async with connect(url, max_size=16 * 1024 * 1024, proxy=None,
                       additional_headers={"traceparent": traceparent()}) as ws:
        json.loads(await ws.recv())
        for message in messages:
            started = time.perf_counter()
            first = None
            await ws.send(json.dumps({"type": "chat_request", "user_id": user_id, "message": message,
                                      "configuration": DEFAULT_CONFIGURATION,
                                      "context": {"traceparent": traceparent()}, "stream_audio": True,
                                      "voice_id": None}))
            while True:
                frame = json.loads(await ws.recv())
                if first is None and frame["type"] == "text_chunk" and frame["chunk"]:
                    first = (time.perf_counter() - started) * 1000
                if frame["type"] == "complete":
                    completed += 1
                    break
                if frame["type"] in ("error", "interrupted"):
                    break
            if first is not None:
                ttfc.append(first)
    return completed


def run_bare(url: str, sessions: int, turns: int) -> dict[str, float]:
    prefix = f"bare-{uuid.uuid4().hex[:6]}"
    plan = [[DEFAULT_MESSAGES[turn % len(DEFAULT_MESSAGES)] for turn in range(turns)] for _ in range(sessions)]
    ttfc: list[float] = []

    async def main() -> list[int | BaseException]:
        return await asyncio.gather(*(bare_session(url, f"{prefix}-{index}", plan[index], ttfc)
                                      for index in range(sessions)), return_exceptions=True)

    started, cpu_started = time.perf_counter(), time.process_time()
    results = asyncio.run(main())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    completed = sum(result for result in results if isinstance(result, int))
    return {"turns": completed, "seconds": seconds, "cpu": cpu, "errors": sessions * turns - completed,
            "p50": statistics.median(ttfc) if ttfc else float("nan")}


def run_driver(url: str, sessions: int, turns: int, collector: object | None) -> dict[str, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    frame = run_sessions(url, sessions=sessions, turns=turns, concurrency=sessions, progress=False,
                         collector=collector, timeout=1800)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    summary = summarize(frame)
    return {"turns": int(frame["error_code"].isna().sum()), "seconds": seconds, "cpu": cpu,
            "errors": summary.error_count,
            "p50": summary.timings.loc["time_to_first_chunk_ms", "p50"],
            "p95": summary.timings.loc["time_to_first_chunk_ms", "p95"],
            "p99": summary.timings.loc["time_to_first_chunk_ms", "p99"], "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200, help="concurrent sessions (default 200)")
    parser.add_argument("--turns", type=int, default=5, help="turns per session (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each of the two loops (default 2)")
    parser.add_argument("--test-server", action="store_true", help="use the scripted test server, not the agent")
    parser.add_argument("--collector", action="store_true",
                        help="export the agent's and the driver's spans to an in-process Collector")
    args = parser.parse_args()

    collector = None
    if args.collector:
        from homunculy_nb.collector import Collector

        collector = Collector(grpc_port=0, http_port=0).start()

    if args.test_server:
        target, label = scripted_server(), "the scripted test server (tests/unit/chat/agent_server.py)"
    else:
        target = reference_agent(collector.endpoints["http"] if collector else None)
        label = "the reference agent (homunculy_nb.services.agent with the local LLM and PostgreSQL)"

    with target as url:
        print(f"Target: {label} at {url}")
        print(f"Load: {args.sessions} concurrent sessions x {args.turns} turns, {args.rounds} rounds per loop")
        # One small warm-up so first-connection and first-query costs fall outside both measurements.
        run_sessions(url, sessions=4, turns=1, progress=False)

        bare_runs, driver_runs = [], []
        for round_index in range(args.rounds):
            order = ("bare", "driver") if round_index % 2 == 0 else ("driver", "bare")
            for kind in order:
                if kind == "bare":
                    bare_runs.append(run_bare(url, args.sessions, args.turns))
                    result = bare_runs[-1]
                else:
                    driver_runs.append(run_driver(url, args.sessions, args.turns, collector))
                    result = driver_runs[-1]
                print(f"  round {round_index + 1} {kind:6}: {result['turns']:5d} turns in {result['seconds']:6.2f} s"
                      f" = {result['turns'] / result['seconds']:7.1f} turns/s, errors {result['errors']},"
                      f" p50 first chunk {result['p50']:.0f} ms, client CPU {result['cpu']:.1f} s")

    if collector is not None:
        collector.stop()

    bare_rate = sum(run["turns"] for run in bare_runs) / sum(run["seconds"] for run in bare_runs)
    driver_rate = sum(run["turns"] for run in driver_runs) / sum(run["seconds"] for run in driver_runs)
    errors = sum(run["errors"] for run in driver_runs)
    ratio = bare_rate / driver_rate
    bare_cpu = sum(run["cpu"] for run in bare_runs) / max(sum(run["turns"] for run in bare_runs), 1) * 1000
    driver_cpu = sum(run["cpu"] for run in driver_runs) / max(sum(run["turns"] for run in driver_runs), 1) * 1000
    last = driver_runs[-1]
    print()
    print(f"driver throughput:          {driver_rate:.1f} turns/s")
    print(f"bare websockets throughput: {bare_rate:.1f} turns/s")
    print(f"time to first chunk (driver, last round): p50 {last['p50']:.0f} ms, p95 {last['p95']:.0f} ms, "
          f"p99 {last['p99']:.0f} ms")
    print(f"client CPU per turn (this process, all threads): driver {driver_cpu:.2f} ms, bare loop "
          f"{bare_cpu:.2f} ms, ratio {driver_cpu / bare_cpu:.2f}x")
    print(f"driver errors: {errors}")
    verdict = "meets" if ratio <= TARGET_RATIO and errors == 0 else "misses"
    print(f"driver overhead: {ratio:.3f}x the bare loop's time per turn ({verdict} the target of "
          f"<= {TARGET_RATIO}x with zero errors)")


if __name__ == "__main__":
    main()
