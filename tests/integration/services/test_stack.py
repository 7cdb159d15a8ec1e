"""The whole Homunculy preset launched by the orchestrator: order, traffic, telemetry, restarts, isolation."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from websockets.sync.client import connect

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.stacks import homunculy_stack

pytestmark = pytest.mark.integration

TIMEOUT = 30
APPS = ("llm", "homunculy-app", "management-app")


def otlp_collector(otlp: Any) -> SimpleNamespace:
    """Present the test's OTLP/HTTP receiver the way the stack reads a collector."""
    return SimpleNamespace(endpoints={"http": otlp.endpoint, "grpc": otlp.endpoint}, api_key=None)


def build(otlp: Any, state_dir: Path, name: str, **options: Any):
    stack = homunculy_stack(collector=otlp_collector(otlp), ports="auto", name=name, state_dir=state_dir,
                            tts="tone", **options)
    for resource in stack.resources.values():
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in resource.environment:
            resource.with_otlp_exporter("http/protobuf")
    if "llm" in stack.resources:
        stack.resources["llm"].with_environment("LOCAL_LLM_TTFT_MS", "20")
        stack.resources["llm"].with_environment("LOCAL_LLM_TOKENS_PER_SECOND", "400")
    return stack


@pytest.fixture(autouse=True)
def secrets_home(tmp_path, monkeypatch) -> None:
    """Keep the generated database passwords out of the user's own secrets file."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for variable in ("PARAMETERS__OPENAI_API_KEY", "PARAMETERS__ELEVENLABS_API_KEY"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Outside pytest's temporary root, which is private to root while PostgreSQL may run as `postgres`.
    path = Path(tempfile.mkdtemp(prefix="homunculy-stack-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def stack(otlp, state_dir) -> Iterator[Any]:
    stack = build(otlp, state_dir, f"preset-{uuid.uuid4().hex[:6]}")
    try:
        stack.up(timeout=180)
        yield stack
    finally:
        stack.down(volumes=True)


def chat_turn(url: str, user: str, message: str) -> list[dict[str, Any]]:
    with connect(url) as ws:
        json.loads(ws.recv(timeout=TIMEOUT))
        ws.send(json.dumps({"type": "chat_request", "user_id": user, "message": message}))
        frames = []
        while not frames or frames[-1]["type"] != "complete":
            frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
    return frames


def first_event(events: Any, resource: str, state: str) -> Any:
    rows = events[(events.resource == resource) & (events.state == state)]
    assert len(rows), f"`{resource}` never reached {state}"
    return rows.time.iloc[0]


def port_open(url: str) -> bool:
    address = httpx.URL(url)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((address.host, address.port)) == 0


def test_preset_up_in_order_and_down_clean(otlp, state_dir):
    stack = build(otlp, state_dir, "order")
    try:
        stack.up(timeout=180)
        status = stack.status().set_index("name")
        events = stack.events()
        pids = [int(pid) for pid in status.pid.dropna()]
        urls = [stack.resources[name].url() for name in APPS]
        agent_ws = stack.resources["homunculy-app"].websocket_url("/api/v1/ws/chat")
        management = stack.resources["management-app"].url()

        for name in ("homunculy-postgres", "management-postgres", *APPS):
            assert status.loc[name, "state"] == "Healthy", status
        for name in ("homunculy-migrations", "management-migrations"):
            assert status.loc[name, "state"] == "Finished", status
        assert first_event(events, "homunculy-migrations", "Finished") <= first_event(events, "homunculy-app", "Starting")
        assert first_event(events, "homunculy-app", "Healthy") <= first_event(events, "management-app", "Starting")
        assert first_event(events, "management-migrations", "Finished") <= first_event(events, "management-app", "Starting")

        frames = chat_turn(agent_ws, "stack-user", "How do volcanoes erupt?")
        assert [f["type"] for f in frames].count("text_chunk") > 1
        assert any(f["type"] == "audio_chunk" for f in frames)
        assert "volcanoes" in frames[-1]["message"]
        health = httpx.get(management + "/api/v1/health", timeout=TIMEOUT).json()
        assert health["status"] == "healthy"
    finally:
        stack.down(volumes=True)

    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not [url for url in urls if port_open(url)]


def test_management_chat_through_stack(stack, otlp):
    api = stack.resources["management-app"].url() + "/api/v1"
    user = httpx.post(api + "/users", json={"email": f"{uuid.uuid4().hex[:8]}@example.org", "name": "Bo",
                                            "subscription_tier": "free"}, timeout=TIMEOUT).json()
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    body = {"user_id": user["id"], "message": "What makes bread rise?", "configuration": {"max_tokens": 8}}

    replies = [httpx.post(api + "/chat", json=body, headers=headers if i == 0 else {}, timeout=TIMEOUT)
               for i in range(6)]

    assert [reply.status_code for reply in replies] == [200] * 5 + [429]
    assert replies[0].json()["usage"]["tokens_used"] > 0
    assert replies[-1].json()["limit"] == "requests_per_minute"

    wanted = {"management-app", "homunculy-app", "llm"}
    # Each service exports its spans in its own batches, so wait until every kind has arrived.
    spans = otlp.wait_for(lambda spans: wanted <= {s["service"] for s in spans if s["trace_id"] == trace_id}
                          and any(s["attributes"].get("db.system") == "postgresql" for s in spans
                                  if s["trace_id"] == trace_id)
                          and any(s["attributes"].get("gen_ai.request.model") for s in spans
                                  if s["trace_id"] == trace_id))
    in_trace = [span for span in spans if span["trace_id"] == trace_id]
    assert {span["service"] for span in in_trace} >= wanted
    assert any(span["attributes"].get("db.system") == "postgresql" for span in in_trace)
    assert any(span["attributes"].get("gen_ai.request.model") for span in in_trace)


def test_conversation_survives_down_up(otlp, state_dir):
    stack = build(otlp, state_dir, "restart")
    user = f"user-{uuid.uuid4().hex[:8]}"
    try:
        stack.up(timeout=180)
        before = chat_turn(stack.resources["homunculy-app"].websocket_url("/api/v1/ws/chat"), user, "Hello, I like chess.")
        stack.down()
        stack.up(timeout=180)
        after = chat_turn(stack.resources["homunculy-app"].websocket_url("/api/v1/ws/chat"), user, "Any chess openings?")
        with psycopg.connect(stack.resources["homunculy"].connection_string.reveal()) as conn:
            roles = [row[0] for row in conn.execute(
                "SELECT m.role FROM messages m JOIN sessions s ON s.id = m.session_id WHERE s.user_id = %s "
                "ORDER BY m.id", (user,)).fetchall()]
    finally:
        stack.down(volumes=True)

    assert after[-1]["metadata"]["thread_id"] == before[-1]["metadata"]["thread_id"]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_two_stacks_side_by_side(stack, otlp, state_dir):
    second_dir = Path(tempfile.mkdtemp(prefix="homunculy-stack-"))
    second = build(otlp, second_dir, f"second-{uuid.uuid4().hex[:6]}")
    try:
        second.up(timeout=180)
        first_urls = {name: stack.resources[name].url() for name in APPS}
        second_urls = {name: second.resources[name].url() for name in APPS}

        assert set(first_urls.values()).isdisjoint(second_urls.values())
        for urls in (first_urls, second_urls):
            assert httpx.get(urls["homunculy-app"] + "/health", timeout=TIMEOUT).json()["status"] == "healthy"
            assert httpx.get(urls["management-app"] + "/api/v1/health", timeout=TIMEOUT).status_code == 200
    finally:
        second.down(volumes=True)
        shutil.rmtree(second_dir, ignore_errors=True)


# -- real-checkout mode ---------------------------------------------------------------------------


def write_checkout(root: Path) -> Path:
    """Write a tree shaped like the Homunculy repository, with a small FastAPI agent and changelogs."""
    src = root / "homunculy" / "src"
    src.mkdir(parents=True)
    (root / "homunculy" / "requirements.txt").write_text("fastapi\nuvicorn\n")
    (src / "main.py").write_text(textwrap.dedent('''
        import os
        import socket

        from fastapi import FastAPI

        # Like the real service, refuse to start when PostgreSQL is unreachable.
        socket.create_connection((os.environ["DB_HOST"], int(os.environ["DB_PORT"])), timeout=5).close()
        app = FastAPI()


        @app.get("/health")
        def health():
            return {"status": "healthy", "service": "checkout-agent", "version": "test",
                    "llm": os.environ["OPENAI_BASE_URL"]}
    '''))
    changelog = root / "homunculy-db" / "changelog"
    changelog.mkdir(parents=True)
    (changelog / "db.changelog-master.xml").write_text(textwrap.dedent('''\
        <?xml version="1.0" encoding="UTF-8"?>
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <include file="001-checkout.sql" relativeToChangelogFile="true"/>
        </databaseChangeLog>
    '''))
    (changelog / "001-checkout.sql").write_text(
        "--liquibase formatted sql\n\n--changeset test:1\nCREATE TABLE checkout_marker (id INT PRIMARY KEY);\n"
    )
    (root / "management-service-db" / "changelog").mkdir(parents=True)
    return root


def test_checkout_runs_agent_from_source(otlp, state_dir):
    root = write_checkout(state_dir / "checkout")
    stack = homunculy_stack(source=root, collector=otlp_collector(otlp), ports="auto", management="reference",
                            name="checkout", state_dir=state_dir / "state", python=sys.executable)
    try:
        stack.up(timeout=300)
        status = stack.status().set_index("name")
        health = httpx.get(stack.resources["homunculy-app"].url() + "/health", timeout=TIMEOUT).json()
        with psycopg.connect(stack.resources["homunculy"].connection_string.reveal()) as conn:
            marker = conn.execute("SELECT to_regclass('checkout_marker')").fetchone()[0]
    finally:
        stack.down(volumes=True)

    assert status.loc["homunculy-app-venv", "state"] == "Finished"
    assert status.loc["homunculy-app-install", "state"] == "Finished"
    assert status.loc["homunculy-app", "state"] == "Healthy"
    assert status.loc["management-app", "state"] == "Healthy"
    assert health["service"] == "checkout-agent"
    assert health["llm"].endswith("/v1")
    assert marker == "checkout_marker"


def test_checkout_without_go_names_fix(state_dir, monkeypatch):
    root = write_checkout(state_dir / "checkout")
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))

    with pytest.raises(ConfigurationError, match="management=\"reference\""):
        homunculy_stack(source=root, ports="auto", name="nogo", state_dir=state_dir / "state",
                        python=sys.executable)


def test_source_not_a_checkout(state_dir):
    with pytest.raises(ConfigurationError, match="not a Homunculy checkout"):
        homunculy_stack(source=state_dir, ports="auto", name="bad", state_dir=state_dir / "state")


def test_one_trace_in_collector(state_dir):
    collector_module = pytest.importorskip("homunculy_nb.collector")
    collector = collector_module.Collector(grpc_port=0, http_port=0).start()
    stack = homunculy_stack(collector=collector, ports="auto", name="collected", state_dir=state_dir, tts="tone")
    stack.resources["llm"].with_environment("LOCAL_LLM_TTFT_MS", "20")
    try:
        stack.up(timeout=180)
        api = stack.resources["management-app"].url() + "/api/v1"
        user = httpx.post(api + "/users", json={"email": "trace@example.org", "name": "Cy",
                                                "subscription_tier": "premium"}, timeout=TIMEOUT).json()
        trace_id = uuid.uuid4().hex
        headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
        reply = httpx.post(api + "/chat", json={"user_id": user["id"], "message": "Why do leaves fall?"},
                           headers=headers, timeout=TIMEOUT)

        wanted = {"management-app", "homunculy-app", "llm"}
        deadline = time.monotonic() + 30
        spans = collector.spans(trace_id=trace_id)
        while not wanted <= set(spans.service_name) and time.monotonic() < deadline:
            time.sleep(0.5)
            spans = collector.spans(trace_id=trace_id)
    finally:
        stack.down(volumes=True)
        collector.stop()

    assert reply.status_code == 200
    assert wanted <= set(spans.service_name)
    assert any(attributes.get("db.system") == "postgresql" for attributes in spans.attributes)
