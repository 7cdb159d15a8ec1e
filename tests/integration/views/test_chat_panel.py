"""ChatPanel against a small WebSocket server that speaks the agent's chat protocol, with a real collector."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import pytest
from websockets.asyncio.server import serve

from homunculy_nb.chat import ChatClient
from homunculy_nb.collector import Collector
from homunculy_nb.views import ChatPanel

CHUNKS = ["Hello ", "from ", "the agent."]
AUDIO = b"ID3" + bytes(range(256)) * 4


async def _handle(connection) -> None:
    await connection.send(json.dumps({"type": "connection_status", "status": "connected", "message": "hi",
                                      "timestamp": "2026-01-01T00:00:00Z"}))
    async for frame in connection:
        request = json.loads(frame)
        if request.get("type") != "chat_request":
            continue
        if request["message"] == "fail":
            await connection.send(json.dumps({"type": "error", "code": "INVALID_REQUEST",
                                              "message": "message rejected", "details": None,
                                              "timestamp": "2026-01-01T00:00:00Z"}))
            continue
        for index, chunk in enumerate(CHUNKS, start=1):
            await connection.send(json.dumps({"type": "text_chunk", "chunk": chunk, "chunk_index": index,
                                              "is_final": False, "timestamp": "2026-01-01T00:00:00Z"}))
            await asyncio.sleep(0.05)
        if request.get("stream_audio", True):
            for index, data in enumerate((AUDIO, b""), start=1):
                await connection.send(json.dumps({
                    "type": "audio_chunk", "data": base64.b64encode(data).decode(), "chunk_index": index,
                    "is_final": not data, "size_bytes": len(data), "timestamp": "2026-01-01T00:00:00Z"}))
        await connection.send(json.dumps({"type": "metadata", "model_used": "test", "tokens_used": 3,
                                          "total_text_chunks": 3, "total_audio_chunks": 2}))
        await connection.send(json.dumps({"type": "complete", "message": "".join(CHUNKS), "metadata": {},
                                          "timestamp": "2026-01-01T00:00:00Z"}))


@pytest.fixture
def chat_url():
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder = {}

    async def main():
        async with serve(_handle, "127.0.0.1", 0) as server:
            holder["port"] = server.sockets[0].getsockname()[1]
            holder["stop"] = loop.create_future()
            ready.set()
            await holder["stop"]

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    try:
        yield f"ws://127.0.0.1:{holder['port']}/api/v1/ws/chat"
    finally:
        loop.call_soon_threadsafe(holder["stop"].set_result, None)
        thread.join(30)
        loop.close()


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.mark.integration
def test_chat_panel_turn_shows_text_audio_timings(chat_url):
    with ChatClient(chat_url) as client:
        panel = ChatPanel(client, interval=0.1)
        try:
            turn = panel.send("hi there", wait=True)

            assert turn.text == "".join(CHUNKS)
            assert "Hello from the agent." in panel.answer.value
            assert panel.audio.value == AUDIO
            assert panel.audio.layout.display is None
            assert "3 text chunks, 2 audio chunks (1027 bytes)" in panel.timings.value
            assert turn.trace_id in panel.trace.value
            assert not panel.send_button.disabled
        finally:
            panel.close()


@pytest.mark.integration
def test_chat_panel_button_runs_turn_in_background(chat_url):
    with ChatClient(chat_url) as client:
        panel = ChatPanel(client, interval=0.1, stream_audio=False)
        try:
            panel.message.value = "from the button"
            panel.send_button.click()
            wait_for(lambda: panel.turn is not None)

            assert panel.turn.text == "".join(CHUNKS)
            assert panel.audio.layout.display == "none"
            assert "0 audio chunks" in panel.timings.value
        finally:
            panel.close()


@pytest.mark.integration
def test_chat_panel_shows_server_error(chat_url):
    with ChatClient(chat_url) as client:
        panel = ChatPanel(client, interval=0.1)
        try:
            panel.send("fail", wait=True)

            assert "INVALID_REQUEST" in panel.answer.value
            assert "message rejected" in panel.answer.value
            assert not panel.send_button.disabled
            assert panel.send("   ") is None
            assert "Type a message first." in panel.answer.value
        finally:
            panel.close()


@pytest.mark.integration
def test_chat_panel_draws_trace_from_collector(chat_url):
    collector = Collector(grpc_port=0, http_port=0).start()
    try:
        with ChatClient(chat_url, collector=collector) as client:
            panel = ChatPanel(client, source=collector, interval=0.1)
            try:
                turn = panel.send("trace me", wait=True)
                wait_for(lambda: turn.trace_id[:8] in (panel.figure.layout.title.text or ""))

                services = {trace.name for trace in panel.figure.data}
                assert "homunculy-nb-chat" in services
            finally:
                panel.close()
    finally:
        collector.stop()


def test_chat_panel_rejects_non_client():
    with pytest.raises(TypeError, match="Expected a ChatClient"):
        ChatPanel(object())
