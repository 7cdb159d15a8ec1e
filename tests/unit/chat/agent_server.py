"""A small agent chat server for the chat client's tests: the WebSocket protocol, plus scripted misbehaviour.

It responds like the agent: `connection_status`, text chunks numbered from 1 with an empty final chunk,
audio chunks with an empty final chunk, `metadata`, `complete`, `interrupted`, `pong` and the `error`
codes. A message starting with `!` picks a script instead of the echo reply:

    !malformed   a frame that is not JSON and a JSON array, then the normal reply
    !unknown     a frame of unknown type, then the normal reply
    !binary      a binary frame, then the normal reply
    !audio2mib   one 2 MiB audio chunk
    !stall       two text chunks, then nothing
    !close1011   one text chunk, then a close with code 1011
    !slow        200 text chunks 20 ms apart (to be interrupted)
    !empty       `metadata` and `complete` with no text
    !headers     replies with the handshake's and the request's `traceparent`

Run it as a script (`python agent_server.py`) to serve on a free port in its own process; it prints
`PORT <n>` and serves until stdin closes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import threading
from datetime import datetime, timezone
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

TWO_MIB = 2 * 1024 * 1024


def audio_for(message: str, size: int = 3000) -> bytes:
    """Return the audio bytes the server sends for `message`: deterministic, so a test can compare."""
    seed = hashlib.sha256(message.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def reply_for(message: str) -> list[str]:
    """Return the text chunks of the echo reply to `message`."""
    words = f"You said: {message}".split(" ")
    return [word + " " for word in words[:-1]] + [words[-1]]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class AgentServer:
    """The test server on its own thread and event loop, bound to 127.0.0.1 on a free port."""

    def __init__(self, chunk_delay: float = 0.0, audio_chunk_size: int = 1000, ping_interval: float | None = None,
                 ping_timeout: float | None = None, greet: bool = True, reject_status: int | None = None) -> None:
        self.chunk_delay = chunk_delay
        self.audio_chunk_size = audio_chunk_size
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.greet = greet
        self.reject_status = reject_status
        self.port = 0
        self.open_connections = 0
        self.max_open_connections = 0
        self.total_connections = 0
        self.handshake_headers: list[dict[str, str]] = []
        self.requests: list[dict[str, Any]] = []
        self.connections: list[ServerConnection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/ws/chat"

    def start(self) -> AgentServer:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve(ready))
            self._loop.close()

        self._thread = threading.Thread(target=run, name="test-agent-server", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the test agent server did not start within 10 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> AgentServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, ready: threading.Event | None) -> None:
        self._stop = asyncio.Event()
        def process_request(connection: ServerConnection, request: Any) -> Any:
            if self.reject_status is not None:
                return connection.respond(self.reject_status, "rejected by the test server\n")
            return None

        async with serve(self._handle, "127.0.0.1", 0, max_size=None, ping_interval=self.ping_interval,
                         ping_timeout=self.ping_timeout, process_request=process_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            if ready is not None:
                ready.set()
            await self._stop.wait()

    async def _handle(self, ws: ServerConnection) -> None:
        self.open_connections += 1
        self.total_connections += 1
        self.max_open_connections = max(self.max_open_connections, self.open_connections)
        self.handshake_headers.append(dict(ws.request.headers.raw_items()))
        self.connections.append(ws)
        session = _Session(self, ws)
        try:
            if self.greet:
                await ws.send(json.dumps({"type": "connection_status", "status": "connected",
                                          "message": "Connected to the test agent", "timestamp": _now()}))
            await session.run()
        finally:
            self.open_connections -= 1


class _Session:
    """One connection: a receiver that interrupts the active reply when a new request arrives."""

    def __init__(self, server: AgentServer, ws: ServerConnection) -> None:
        self.server = server
        self.ws = ws
        self.active: asyncio.Task[None] | None = None
        self.text_index = 0
        self.audio_index = 0

    async def run(self) -> None:
        try:
            async for frame in self.ws:
                await self._on_frame(frame)
        except Exception:  # noqa: BLE001 - a closed connection ends the session either way
            pass
        finally:
            if self.active is not None:
                self.active.cancel()

    async def _send(self, payload: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(payload | {"timestamp": _now()}))

    async def _error(self, code: str, message: str) -> None:
        await self._send({"type": "error", "code": code, "message": message, "details": None})

    async def _on_frame(self, frame: str | bytes) -> None:
        try:
            data = json.loads(frame)
        except ValueError as exc:
            await self._error("INVALID_JSON", f"Invalid JSON: {exc}")
            return
        if not isinstance(data, dict) or "type" not in data:
            await self._error("MISSING_TYPE", "The message has no `type` field")
            return
        if data["type"] == "ping":
            await self._send({"type": "pong"})
            return
        if data["type"] != "chat_request":
            await self._error("INVALID_MESSAGE_TYPE", f"Unknown message type: {data['type']}")
            return

        if self.active is not None and not self.active.done():
            self.active.cancel()
            await self._send({"type": "interrupted", "reason": "new_message",
                              "message": "Stream interrupted - new message received",
                              "interrupted_at_text_chunk": self.text_index,
                              "interrupted_at_audio_chunk": self.audio_index})
        message = data.get("message")
        if not isinstance(message, str) or not message or not isinstance(data.get("user_id"), str):
            await self._error("INVALID_REQUEST", "`user_id` and a non-empty `message` are required")
            return

        self.server.requests.append(data)
        self.active = asyncio.ensure_future(self._reply(data))

    async def _reply(self, request: dict[str, Any]) -> None:
        self.text_index = self.audio_index = 0
        message: str = request["message"]
        script = message.split(" ")[0] if message.startswith("!") else None
        chunks = reply_for(message)
        audio = audio_for(message) if request.get("stream_audio", True) else b""

        if script == "!malformed":
            await self.ws.send("{this is not json")
            await self.ws.send("[1, 2, 3]")
        elif script == "!unknown":
            await self._send({"type": "mystery", "value": 42})
        elif script == "!binary":
            await self.ws.send(b"\x00\x01binary")
        elif script == "!audio2mib":
            chunks, audio = ["Here is a large clip."], audio_for(message, TWO_MIB)
        elif script == "!slow":
            chunks = [f"word{i} " for i in range(200)]
        elif script == "!empty":
            chunks, audio = [], b""
        elif script == "!headers":
            headers = self.server.handshake_headers[-1]
            chunks = [headers.get("traceparent", "-"), " ", request.get("context", {}).get("traceparent", "-")]
        elif script == "!stall":
            await self._text(chunks[:2], 0.0)
            await asyncio.Event().wait()
        elif script == "!close1011":
            await self._text(chunks[:1], 0.0)
            await self.ws.close(1011, "agent crashed")
            return

        delay = 0.02 if script == "!slow" else self.server.chunk_delay
        await self._text(chunks, delay)
        if chunks:
            self.text_index += 1
            await self._send({"type": "text_chunk", "chunk": "", "chunk_index": self.text_index, "is_final": True})
        if audio:
            await self._audio(audio, TWO_MIB if script == "!audio2mib" else self.server.audio_chunk_size)

        metadata = {"model_used": "test-model", "tokens_used": len(chunks), "execution_time_ms": 1,
                    "tools_called": [], "thread_id": request["user_id"], "voice_id": request.get("voice_id"),
                    "total_text_chunks": self.text_index, "total_audio_chunks": self.audio_index}
        await self._send({"type": "metadata"} | metadata)
        await self._send({"type": "complete", "message": "Stream completed successfully", "metadata": metadata})

    async def _text(self, chunks: list[str], delay: float) -> None:
        for chunk in chunks:
            self.text_index += 1
            await self._send({"type": "text_chunk", "chunk": chunk, "chunk_index": self.text_index,
                              "is_final": False})
            if delay:
                await asyncio.sleep(delay)

    async def _audio(self, audio: bytes, size: int) -> None:
        for start in range(0, len(audio), size):
            piece = audio[start:start + size]
            self.audio_index += 1
            await self._send({"type": "audio_chunk", "data": base64.b64encode(piece).decode(),
                              "chunk_index": self.audio_index, "is_final": False, "size_bytes": len(piece)})
        self.audio_index += 1
        await self._send({"type": "audio_chunk", "data": "", "chunk_index": self.audio_index, "is_final": True,
                          "size_bytes": 0})


def main() -> None:
    """Serve in this process until stdin closes; print the port first."""
    server = AgentServer(chunk_delay=float(sys.argv[1]) if len(sys.argv) > 1 else 0.0)

    async def serve_until_stdin_closes() -> None:
        task = asyncio.ensure_future(server._serve(None))
        while server.port == 0:
            await asyncio.sleep(0.01)
        print(f"PORT {server.port}", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        assert server._stop is not None
        server._stop.set()
        await task

    asyncio.run(serve_until_stdin_closes())


if __name__ == "__main__":
    main()
