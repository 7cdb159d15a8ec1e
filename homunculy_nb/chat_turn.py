"""One chat turn: the frames the agent streams for a request, and the timings measured on them.

A `Turn` is built by feeding it `ChatEvent`s in arrival order with `Turn.apply`. It checks what a client
can check without the server's help (chunk indexes consecutive, audio sizes, a turn that completes with no
text) and records each finding in `Turn.problems` instead of raising.
"""

from __future__ import annotations

import binascii
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

logger = logging.getLogger(__name__)

# Frame types of the agent's WebSocket chat protocol, by direction.
SERVER_FRAME_TYPES = frozenset({
    "connection_status", "text_chunk", "audio_chunk", "metadata", "complete", "interrupted", "pong", "error",
})
TERMINAL_FRAME_TYPES = frozenset({"complete", "interrupted", "error"})

# Client-side error codes, used next to the server's codes in load results.
EMPTY_RESPONSE = "EMPTY_RESPONSE"


@dataclass(frozen=True, slots=True)
class ChatEvent:
    """One frame received from the agent.

    `data` is the decoded JSON object, or None when the frame was not one. `raw` keeps the frame as received
    only when it could not be used (`problem` then gives the reason), so audio frames are not stored twice.
    """

    type: str | None
    data: dict[str, Any] | None
    elapsed_ms: float
    raw: str | bytes | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A `text_chunk` frame: `index` as the server numbered it (it may start at 1), None when absent."""

    index: int | None
    text: str
    is_final: bool
    elapsed_ms: float


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """An `audio_chunk` frame with its base64 `data` decoded; the final chunk may carry no bytes."""

    index: int | None
    data: bytes
    size_bytes: int | None
    is_final: bool
    elapsed_ms: float


@dataclass(frozen=True, slots=True)
class TurnError:
    """The `error` frame the server sent for a request."""

    code: str
    message: str
    details: Any = None


def decode_frame(frame: str | bytes, elapsed_ms: float) -> ChatEvent:
    """Parse one WebSocket frame into a `ChatEvent`; a frame that is not a known JSON object gets a `problem`."""
    if isinstance(frame, bytes):
        return ChatEvent(None, None, elapsed_ms, raw=frame,
                         problem=f"binary frame of {len(frame)} bytes (the protocol sends JSON text)")

    try:
        data = json.loads(frame)
    except ValueError as exc:
        return ChatEvent(None, None, elapsed_ms, raw=frame, problem=f"invalid JSON: {exc}")

    if not isinstance(data, dict):
        return ChatEvent(None, None, elapsed_ms, raw=frame,
                         problem=f"JSON {type(data).__name__} instead of an object")

    frame_type = data.get("type")
    if frame_type not in SERVER_FRAME_TYPES:
        return ChatEvent(frame_type if isinstance(frame_type, str) else None, data, elapsed_ms, raw=frame,
                         problem=f"unknown frame type {frame_type!r}")

    return ChatEvent(frame_type, data, elapsed_ms)


@dataclass(eq=False)
class Turn:
    """One request and everything the agent streamed back for it.

    Timings are milliseconds since the request was sent, measured on the client's monotonic clock.
    `time_to_first_chunk_ms` is the arrival of the first text chunk with text in it, and
    `time_to_first_audio_ms` of the first audio chunk with bytes. `duration_ms` is the arrival of the
    frame that ended the turn (`complete`, `interrupted` or `error`). Each stays None until its frame
    arrives.
    """

    message: str | None
    user_id: str | None
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    trace_id: str | None = None
    span_id: str | None = None
    chunks: list[TextChunk] = field(default_factory=list)
    audio_chunks: list[AudioChunk] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    events: list[ChatEvent] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    completed: bool = False
    interrupted: bool = False
    interruption: dict[str, Any] | None = None
    error: TurnError | None = None
    time_to_first_chunk_ms: float | None = None
    time_to_first_audio_ms: float | None = None
    duration_ms: float | None = None
    _started: float = field(default_factory=time.perf_counter, repr=False)

    # Reading the turn.

    @property
    def text(self) -> str:
        """The response text: every text chunk joined in arrival order."""
        return "".join(chunk.text for chunk in self.chunks)

    @property
    def audio(self) -> bytes:
        """The response audio (MP3 from the reference agent): decoded chunks joined in `chunk_index` order."""
        ordered = self.audio_chunks
        if all(chunk.index is not None for chunk in ordered):
            ordered = sorted(ordered, key=lambda chunk: chunk.index)
        return b"".join(chunk.data for chunk in ordered)

    @property
    def chunk_indexes(self) -> list[int | None]:
        """The `chunk_index` of each text chunk, in arrival order."""
        return [chunk.index for chunk in self.chunks]

    @property
    def chunk_gaps_ms(self) -> list[float]:
        """The gaps between consecutive text chunks' arrivals, in ms."""
        times = [chunk.elapsed_ms for chunk in self.chunks]
        return [later - earlier for earlier, later in zip(times, times[1:])]

    @property
    def finished(self) -> bool:
        """Whether a `complete`, `interrupted` or `error` frame ended the turn."""
        return self.completed or self.interrupted or self.error is not None

    @property
    def error_code(self) -> str | None:
        """The server's error code, `EMPTY_RESPONSE` for a completed turn without text, else None."""
        if self.error is not None:
            return self.error.code
        if self.completed and not self.text:
            return EMPTY_RESPONSE
        return None

    def elapsed_ms(self, at: float | None = None) -> float:
        """Return the milliseconds from the request's send to `at` (a `time.perf_counter()` value, default now)."""
        return ((time.perf_counter() if at is None else at) - self._started) * 1000.0

    def __repr__(self) -> str:
        if self.completed:
            state = "completed"
        elif self.interrupted:
            state = "interrupted"
        elif self.error is not None:
            state = f"error {self.error.code}"
        else:
            state = "streaming"
        preview = self.text[:40] + ("…" if len(self.text) > 40 else "")
        return (f"<Turn {state}: {preview!r}, {len(self.chunks)} text chunks, {len(self.audio_chunks)} audio "
                f"chunks, first chunk {_ms(self.time_to_first_chunk_ms)}, duration {_ms(self.duration_ms)}, "
                f"trace {self.trace_id}>")

    # Building the turn from frames.

    def apply(self, event: ChatEvent) -> bool:
        """Record `event`; return True when it ends the turn."""
        self.events.append(event)
        if event.problem is not None:
            self.problems.append(event.problem)
            return False

        handler = _HANDLERS.get(event.type or "")
        if handler is None:
            return False
        return handler(self, event.data or {}, event.elapsed_ms)

    def _apply_text_chunk(self, data: dict[str, Any], elapsed_ms: float) -> bool:
        text = data.get("chunk")
        if not isinstance(text, str):
            self.problems.append(f"text_chunk without a string `chunk`: {text!r}")
            text = ""

        index = _index(data)
        previous = self.chunks[-1].index if self.chunks else None
        if previous is not None and index is not None and index != previous + 1:
            self.problems.append(f"text chunk index {index} follows {previous}")

        self.chunks.append(TextChunk(index, text, bool(data.get("is_final")), elapsed_ms))
        if text and self.time_to_first_chunk_ms is None:
            self.time_to_first_chunk_ms = elapsed_ms
        return False

    def _apply_audio_chunk(self, data: dict[str, Any], elapsed_ms: float) -> bool:
        encoded = data.get("data") or ""
        try:
            # Strict mode rejects characters outside the alphabet, in C, without a regex pass over the data.
            audio = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            self.problems.append(f"audio chunk {data.get('chunk_index')!r} is not valid base64: {exc}")
            audio = b""

        size = data.get("size_bytes")
        size = size if isinstance(size, int) else None
        if size is not None and size != len(audio):
            self.problems.append(f"audio chunk {data.get('chunk_index')!r} has {len(audio)} bytes, "
                                 f"`size_bytes` says {size}")

        index = _index(data)
        previous = self.audio_chunks[-1].index if self.audio_chunks else None
        if previous is not None and index is not None and index != previous + 1:
            self.problems.append(f"audio chunk index {index} follows {previous}")

        self.audio_chunks.append(AudioChunk(index, audio, size, bool(data.get("is_final")), elapsed_ms))
        if audio and self.time_to_first_audio_ms is None:
            self.time_to_first_audio_ms = elapsed_ms
        return False

    def _apply_metadata(self, data: dict[str, Any], elapsed_ms: float) -> bool:
        self.metadata.update({key: value for key, value in data.items() if key not in ("type", "timestamp")})
        return False

    def _apply_complete(self, data: dict[str, Any], elapsed_ms: float) -> bool:
        self.completed = True
        self.duration_ms = elapsed_ms
        extra = data.get("metadata")
        if isinstance(extra, dict):
            for key, value in extra.items():
                self.metadata.setdefault(key, value)
        if not self.text:
            self.problems.append("the turn completed with no text")
        return True

    def _apply_interrupted(self, data: dict[str, Any], elapsed_ms: float) -> bool:
        self.interrupted = True
        self.duration_ms = elapsed_ms
        self.interruption = {key: value for key, value in data.items() if key != "type"}
        return True

    def _apply_error(self, data: dict[str, Any], elapsed_ms: float) -> bool:
        self.error = TurnError(str(data.get("code") or "UNKNOWN"), str(data.get("message") or ""),
                               data.get("details"))
        self.duration_ms = elapsed_ms
        return True

    # Exporting the turn.

    def to_record(self) -> dict[str, Any]:
        """Return the turn as a JSON-ready dict, audio reduced to its byte count."""
        return {
            "message": self.message,
            "user_id": self.user_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "text": self.text,
            "text_chunks": len(self.chunks),
            "audio_chunks": len(self.audio_chunks),
            "audio_bytes": sum(len(chunk.data) for chunk in self.audio_chunks),
            "time_to_first_chunk_ms": self.time_to_first_chunk_ms,
            "time_to_first_audio_ms": self.time_to_first_audio_ms,
            "duration_ms": self.duration_ms,
            "completed": self.completed,
            "interrupted": self.interrupted,
            "interruption": self.interruption,
            "error": dataclasses.asdict(self.error) if self.error else None,
            "error_code": self.error_code,
            "problems": list(self.problems),
            "metadata": self.metadata,
            "trace_id": self.trace_id,
        }

    @property
    def finished_at(self) -> datetime | None:
        """The wall-clock time of the frame that ended the turn."""
        if self.duration_ms is None:
            return None
        return self.started_at + timedelta(milliseconds=self.duration_ms)


_HANDLERS = {
    "text_chunk": Turn._apply_text_chunk,
    "audio_chunk": Turn._apply_audio_chunk,
    "metadata": Turn._apply_metadata,
    "complete": Turn._apply_complete,
    "interrupted": Turn._apply_interrupted,
    "error": Turn._apply_error,
}


def _index(data: dict[str, Any]) -> int | None:
    index = data.get("chunk_index")
    return index if isinstance(index, int) and not isinstance(index, bool) else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
