"""Chat through a launched Homunculy stack: the URL from the app model, spans in the stack's collector."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from homunculy_nb.chat import ChatClient

pytestmark = pytest.mark.integration


def test_chat_through_stack(tmp_path):
    from homunculy_nb.collector import Collector
    from homunculy_nb.stacks import homunculy_stack

    # Not under pytest's temporary root: that directory is private to root, and PostgreSQL runs as `postgres`.
    state_dir = Path(tempfile.mkdtemp(prefix="homunculy-chat-stack-"))
    with Collector(grpc_port=0, http_port=0) as collector:
        stack = homunculy_stack(collector=collector, ports="auto", llm="local", tts="tone", name="chat-test",
                                state_dir=state_dir)
        try:
            stack.up(timeout=240, progress=False)
            agent = stack.resources["homunculy-app"]
            with ChatClient(agent.websocket_url("/api/v1/ws/chat"), collector=stack.collector,
                            run_dir=tmp_path / "run") as chat:
                turn = chat.send("Hello!", user_id="demo")
        finally:
            stack.down()
            shutil.rmtree(state_dir, ignore_errors=True)

        # The client's turn span, the agent's spans and the LLM's spans share one trace.
        deadline = time.monotonic() + 30
        services: set[str] = set()
        while time.monotonic() < deadline and not services >= {"homunculy-nb-chat", "homunculy-app", "llm"}:
            services = set(collector.spans(trace_id=turn.trace_id)["service_name"])
            time.sleep(0.2)

    assert turn.completed
    assert turn.text
    assert services >= {"homunculy-nb-chat", "homunculy-app", "llm"}
    record = json.loads((tmp_path / "run" / "chat" / "turns.jsonl").read_text())
    assert record["trace_id"] == turn.trace_id
    assert record["user_id"] == "demo"
