"""The chat WebSocket: one `ChatConnection` per client, one task per turn, interruptible.

Frames are read continuously while a turn streams, so a `ping` gets its `pong` mid-reply and a new
`chat_request` cancels the running turn (its text and audio tasks) before the new one starts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from pydantic import ValidationError

from homunculy_nb.services.agent.agent import Agent, SentenceSplitter
from homunculy_nb.services.agent.llm_client import Completion, LLMError
from homunculy_nb.services.agent.schemas import ChatRequest, timestamp
from homunculy_nb.services.agent.tts import SynthesisError

logger = logging.getLogger(__name__)

AUDIO_CHUNK_BYTES = 16 * 1024
MESSAGE_TYPES = ("chat_request", "ping")
# Code of the `error` frame that ends a turn failing inside the server, such as on a database error.
# The contract's four codes all describe bad client frames.
INTERNAL_ERROR = "INTERNAL_ERROR"


class _Turn:
    """Counters of one running reply, read when it is interrupted."""

    def __init__(self) -> None:
        self.text_chunks = 0
        self.audio_chunks = 0
        self.thread_id: str | None = None
        self.task: asyncio.Task[None] | None = None


class ChatConnection:
    """Serves the chat protocol on one accepted WebSocket."""

    def __init__(self, websocket: WebSocket, agent: Agent) -> None:
        self.websocket = websocket
        self.agent = agent
        # One writer task sends every frame in order, so cancelling a turn never cuts a frame in half.
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._turn: _Turn | None = None
        # Trace context a client sent with the handshake; a request's own `context.traceparent` wins.
        self._handshake_context = propagate.extract(dict(websocket.headers))
        self._connection_span = trace.get_current_span()

    async def send(self, frame: dict[str, Any]) -> None:
        self._outbox.put_nowait(frame)

    async def _write_frames(self) -> None:
        while (frame := await self._outbox.get()) is not None:
            await self.websocket.send_text(json.dumps(frame))

    async def send_error(self, code: str, message: str, details: Any = None) -> None:
        await self.send({"type": "error", "code": code, "message": message, "details": details,
                         "timestamp": timestamp()})

    async def serve(self) -> None:
        """Run the connection until the client disconnects."""
        writer = asyncio.create_task(self._write_frames())
        await self.send({"type": "connection_status", "status": "connected",
                         "message": "Connected to Homunculy chat. Send a chat_request or a ping.",
                         "timestamp": timestamp()})
        try:
            while True:
                frame = await self.websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    break
                await self._dispatch(frame.get("text") if frame.get("text") is not None else frame.get("bytes"))
        except WebSocketDisconnect:
            pass
        finally:
            await self._cancel_turn()
            self._outbox.put_nowait(None)
            try:
                await writer
            except Exception as exc:  # noqa: BLE001 - the client is gone, whatever the transport raised
                logger.debug("Frames still queued were not delivered: %r", exc)

    async def _dispatch(self, raw: str | bytes | None) -> None:
        try:
            message = json.loads(raw) if raw is not None else None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            await self.send_error("INVALID_JSON", "The frame is not valid JSON.", {"error": str(exc)})
            return
        if not isinstance(message, dict) or "type" not in message:
            await self.send_error("MISSING_TYPE", "The frame is not a JSON object with a `type` field.",
                                  {"expected_types": list(MESSAGE_TYPES)})
            return

        kind = message["type"]
        if kind == "ping":
            await self.send({"type": "pong", "timestamp": timestamp()})
        elif kind == "chat_request":
            await self._start_turn(message)
        else:
            await self.send_error("INVALID_MESSAGE_TYPE", f"Unknown message type {kind!r}.",
                                  {"type": kind, "expected_types": list(MESSAGE_TYPES)})

    async def _start_turn(self, message: dict[str, Any]) -> None:
        received = time.perf_counter()
        try:
            request = ChatRequest.model_validate(message)
        except ValidationError as exc:
            details = [{"field": ".".join(str(p) for p in error["loc"]), "error": error["msg"]}
                       for error in exc.errors()]
            await self.send_error("INVALID_REQUEST", "The chat_request is invalid.", details)
            return

        previous = self._turn
        if previous is not None and previous.task is not None and not previous.task.done():
            await self._cancel_turn()
            await self.send({
                "type": "interrupted",
                "reason": "new_message",
                "message": "The previous response was interrupted by a new message.",
                "interrupted_at_text_chunk": previous.text_chunks,
                "interrupted_at_audio_chunk": previous.audio_chunks,
                "timestamp": timestamp(),
            })

        turn = _Turn()
        turn.task = asyncio.create_task(self._run_turn(turn, request, received))
        self._turn = turn

    async def _cancel_turn(self) -> None:
        turn = self._turn
        if turn is None or turn.task is None or turn.task.done():
            return
        turn.task.cancel()
        try:
            await turn.task
        except asyncio.CancelledError:
            pass

    def _parent_context(self, request: ChatRequest) -> tuple[otel_context.Context, list[Link]]:
        traceparent = request.context.get("traceparent")
        if isinstance(traceparent, str):
            return propagate.extract({"traceparent": traceparent}), []
        if trace.get_current_span(self._handshake_context).get_span_context().is_valid:
            return self._handshake_context, []
        # No client trace: each turn is its own trace, linked to the long-lived connection span.
        connection = self._connection_span.get_span_context()
        return otel_context.Context(), [Link(connection)] if connection.is_valid else []

    async def _run_turn(self, turn: _Turn, request: ChatRequest, received: float) -> None:
        parent, links = self._parent_context(request)
        attributes = {"enduser.id": request.user_id, "homunculy.stream_audio": request.stream_audio}
        with self.agent.tracer.start_as_current_span(
            "chat_request", context=parent, kind=SpanKind.SERVER, links=links, attributes=attributes
        ) as span:
            try:
                await self._stream_turn(turn, request, received, span)
            except asyncio.CancelledError:
                span.set_attribute("homunculy.interrupted", True)
                raise
            except Exception as exc:  # noqa: BLE001 - a failed turn must not close the connection
                logger.exception("Chat turn failed", extra={"user_id": request.user_id})
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                # Without a final frame the client would wait for `complete` forever.
                await self.send_error(
                    INTERNAL_ERROR, "The chat turn failed on the server; the connection stays usable.",
                    {"error": f"{type(exc).__name__}: {exc}", "thread_id": turn.thread_id,
                     "text_chunks_sent": turn.text_chunks},
                )
            finally:
                span.set_attribute("homunculy.text_chunks", turn.text_chunks)
                span.set_attribute("homunculy.audio_chunks", turn.audio_chunks)

    async def _stream_turn(self, turn: _Turn, request: ChatRequest, received: float, span: trace.Span) -> None:
        agent = self.agent
        prepared = await agent.prepare(request.user_id, request.message, request.configuration, request.context)
        span.set_attribute("homunculy.thread_id", prepared.thread_id)
        turn.thread_id = prepared.thread_id
        voice_id = request.voice_id or agent.settings.default_voice_id

        sentences: asyncio.Queue[str | None] = asyncio.Queue()
        audio_task = None
        if request.stream_audio:
            audio_task = asyncio.create_task(self._stream_audio(turn, sentences, voice_id))

        completion = Completion(model=prepared.model)
        splitter = SentenceSplitter()
        error = None
        try:
            try:
                async for piece in agent.stream_reply(prepared, completion):
                    if turn.text_chunks == 0:
                        elapsed_ms = (time.perf_counter() - received) * 1000
                        agent.time_to_first_chunk.record(elapsed_ms, {"gen_ai.request.model": prepared.model})
                        span.set_attribute("homunculy.time_to_first_chunk_ms", elapsed_ms)
                    turn.text_chunks += 1
                    await self.send({"type": "text_chunk", "chunk": piece, "chunk_index": turn.text_chunks,
                                     "is_final": False, "timestamp": timestamp()})
                    for sentence in splitter.feed(piece):
                        sentences.put_nowait(sentence)
            except LLMError as exc:
                # Like the real service, a failed LLM call still ends the turn with metadata and complete.
                logger.error("LLM call failed: %s", exc, extra={"user_id": request.user_id})
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                error = str(exc)

            for sentence in splitter.flush():
                sentences.put_nowait(sentence)
            sentences.put_nowait(None)
            if turn.text_chunks:
                await self.send({"type": "text_chunk", "chunk": "", "chunk_index": turn.text_chunks + 1,
                                 "is_final": True, "timestamp": timestamp()})
            if audio_task is not None:
                await audio_task
        finally:
            if audio_task is not None and not audio_task.done():
                audio_task.cancel()

        if completion.text:
            await agent.finish(prepared, completion)
        metadata = {
            "model_used": completion.model,
            "tokens_used": completion.total_tokens,
            "execution_time_ms": round((time.perf_counter() - received) * 1000, 1),
            "tools_called": [],
            "thread_id": prepared.thread_id,
            "voice_id": voice_id,
            "total_text_chunks": turn.text_chunks,
            "total_audio_chunks": turn.audio_chunks,
        }
        if error is not None:
            metadata["error"] = error
        await self.send({"type": "metadata", **metadata, "timestamp": timestamp()})
        await self.send({"type": "complete", "message": completion.text, "metadata": metadata,
                         "timestamp": timestamp()})

    async def _stream_audio(self, turn: _Turn, sentences: asyncio.Queue[str | None], voice_id: str) -> None:
        while (sentence := await sentences.get()) is not None:
            try:
                clip = await self.agent.synthesize(sentence, voice_id)
            except SynthesisError as exc:
                logger.warning("Speech synthesis failed; the sentence has no audio: %s", exc)
                continue
            for offset in range(0, len(clip.data), AUDIO_CHUNK_BYTES):
                data = clip.data[offset:offset + AUDIO_CHUNK_BYTES]
                await self._send_audio(turn, data, is_final=False, audio_format=clip.format)
        await self._send_audio(turn, b"", is_final=True, audio_format=None)

    async def _send_audio(self, turn: _Turn, data: bytes, is_final: bool, audio_format: str | None) -> None:
        frame = {"type": "audio_chunk", "data": base64.b64encode(data).decode(), "chunk_index": turn.audio_chunks,
                 "is_final": is_final, "size_bytes": len(data), "timestamp": timestamp()}
        if audio_format not in (None, "mp3"):
            frame["format"] = audio_format
        turn.audio_chunks += 1
        await self.send(frame)
