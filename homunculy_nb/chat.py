"""A WebSocket client for the agent's chat endpoint (`/api/v1/ws/chat`), for notebook cells and load runs.

The connection and the task that receives frames live on the package's background event loop, so frames
and keepalive pings are handled while a notebook cell is busy. Every public method has one async core
that runs there. The synchronous methods block on it through `homunculy_nb._loop`, and the `_async`
twins await it from the caller's own loop. Both work inside a kernel that already runs an event loop.

Errors (all `homunculy_nb.errors.ChatError`):

ChatError
├── ChatConnectionError   the WebSocket could not be opened (`url`, `cause`)
├── ChatClosedError       the connection closed under a turn or before a send (`code`, `reason`, `turn`)
├── ChatTimeoutError      a turn or ping got no final frame in time (`timeout`, `turn` with what arrived)
└── ChatServerError       the agent sent an `error` frame (`code`, `message`, `details`, `turn`);
    ├── ChatRequestError  code INVALID_REQUEST: the `chat_request` fields were rejected
    └── ChatProtocolError codes INVALID_JSON, MISSING_TYPE, INVALID_MESSAGE_TYPE: the frame was not understood

The connection stays usable after a `ChatServerError` and a `ChatTimeoutError`. Frames that are not valid
JSON or have an unknown `type` are not errors: they are kept in the turn's `events`, listed in
`turn.problems` and logged.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homunculy_nb import _chat_tracing, _loop
from homunculy_nb.chat_turn import (
    AudioChunk, ChatEvent, TextChunk, Turn, TurnError, decode_frame,
)
from homunculy_nb.errors import ChatError, ConfigurationError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DEFAULT_CONFIGURATION", "AudioChunk", "ChatClient", "ChatClosedError", "ChatConnectionError", "ChatEvent",
    "ChatProtocolError", "ChatRequestError", "ChatServerError", "ChatTimeoutError", "ConnectionState",
    "TextChunk", "Turn", "TurnError", "TurnStream", "run_sessions", "run_sessions_async", "summarize",
]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024

DEFAULT_CONFIGURATION: dict[str, Any] = {
    "provider": "openai",
    "model_name": "gpt-4o-mini",
    "personality": {
        "name": "Homunculy",
        "description": "a friendly companion who answers briefly and plainly",
        "traits": {"friendliness": 0.9, "curiosity": 0.7, "humor": 0.4},
        "mood": "cheerful",
    },
    "system_prompt": "Answer in two or three short sentences.",
    "temperature": 0.7,
    "max_tokens": 256,
}

# How many frames that arrive outside any turn are kept in `ChatClient.unmatched_events`.
UNMATCHED_EVENTS_KEPT = 1000


# Errors.

class ChatConnectionError(ChatError):
    """Raised when the WebSocket handshake fails: refused, timed out, rejected with an HTTP status."""

    def __init__(self, message: str, url: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.cause = cause


class ChatClosedError(ChatError):
    """Raised when the connection closed while a turn waited, or a send found it closed."""

    def __init__(self, message: str, url: str, code: int | None, reason: str | None,
                 turn: Turn | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.code = code
        self.reason = reason
        self.turn = turn


class ChatTimeoutError(ChatError):
    """Raised when a turn (or a ping) got no final frame within its timeout; `turn` has what arrived."""

    # NOTE: not a `TimeoutError` subclass, because `_loop.run` turns any `TimeoutError` raised by the
    # coroutine into its own generic "did not finish" error and would lose `turn`.

    def __init__(self, message: str, timeout: float, turn: Turn | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.turn = turn


class ChatServerError(ChatError):
    """Raised when the agent responds to a request with an `error` frame; the session stays usable."""

    def __init__(self, message: str, code: str, server_message: str, details: Any = None,
                 turn: Turn | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.server_message = server_message
        self.details = details
        self.turn = turn


class ChatRequestError(ChatServerError):
    """Raised for the `INVALID_REQUEST` code: the agent rejected the `chat_request` fields."""


class ChatProtocolError(ChatServerError):
    """Raised for `INVALID_JSON`, `MISSING_TYPE` and `INVALID_MESSAGE_TYPE`: the agent did not understand the frame."""


SERVER_ERROR_CLASSES: dict[str, type[ChatServerError]] = {
    "INVALID_REQUEST": ChatRequestError,
    "INVALID_JSON": ChatProtocolError,
    "MISSING_TYPE": ChatProtocolError,
    "INVALID_MESSAGE_TYPE": ChatProtocolError,
}


def server_error(turn: Turn) -> ChatServerError:
    """Build the typed error for a turn that ended with an `error` frame."""
    assert turn.error is not None
    error_class = SERVER_ERROR_CLASSES.get(turn.error.code, ChatServerError)
    request = "a raw frame" if turn.message is None else f"the request {_preview(turn.message)}"
    # The agent's messages end with a period of their own, and a bare `error` frame has no message.
    reason = turn.error.message.rstrip(". ") or "(the frame had no message)"
    return error_class(
        f"The agent answered {request} with error {turn.error.code}: {reason}. "
        "The connection is still open for the next request.",
        turn.error.code, turn.error.message, turn.error.details, turn,
    )


class ConnectionState(str, Enum):
    """The lifecycle state of a `ChatClient`'s connection."""

    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(eq=False)
class _Pending:
    """A request whose final frame (`complete`, `interrupted` or `error`) has not arrived yet."""

    turn: Turn
    done: asyncio.Future[Turn]
    span: Any
    queue: asyncio.Queue[ChatEvent | None] | None = None
    on_event: Callable[[ChatEvent], None] | None = None
    failure: ChatError | None = None
    abandoned: bool = False
    callback_failed: bool = field(default=False, repr=False)


async def _on_background(coro: Any) -> Any:
    """Await `coro` on the package's loop, from that loop or from any other (a notebook kernel's)."""
    if _loop.in_loop_thread():
        return await coro
    return await asyncio.wrap_future(_loop.submit(coro))


class ChatClient:
    """A chat session over one WebSocket connection to the agent.

    Use it as a context manager (`with` or `async with`), which connects and closes, or call `connect()`
    and `close()`. A first `send()` or `ping()` on a new client connects on its own.

    Requests carry `user_id`, `configuration` and `context`. Each turn is a client span whose W3C
    `traceparent` goes in the request's `context`. The handshake carries the `traceparent` of a separate
    connection span. Spans are exported over OTLP gRPC to `otlp_endpoint`, or to
    `collector.endpoints["grpc"]` when a collector is given. With neither, spans are still created for
    their ids but not exported.

    `run_dir`, when set, receives one JSON line per finished turn in `chat/turns.jsonl`.
    """

    def __init__(
        self,
        url: str,
        user_id: str | None = None,
        configuration: dict[str, Any] | None = None,
        *,
        open_timeout: float = 10.0,
        turn_timeout: float = 120.0,
        max_message_size: int = 16 * MIB,
        collector: Any = None,
        otlp_endpoint: str | None = None,
        headers: dict[str, str] | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        run_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
            raise ConfigurationError(
                f"The chat URL {url!r} is not a WebSocket URL. Pass a ws:// or wss:// URL such as "
                "`agent.websocket_url('/api/v1/ws/chat')`."
            )
        for name, value in (("open_timeout", open_timeout), ("turn_timeout", turn_timeout)):
            if not value > 0:
                raise ConfigurationError(f"`{name}` must be a positive number of seconds, got {value!r}.")
        if not isinstance(max_message_size, int) or max_message_size <= 0:
            raise ConfigurationError(f"`max_message_size` must be a positive byte count, got {max_message_size!r}.")
        for name, value in (("ping_interval", ping_interval), ("ping_timeout", ping_timeout)):
            if value is not None and not value > 0:
                raise ConfigurationError(
                    f"`{name}` must be a positive number of seconds, or None to turn it off, got {value!r}.")
        if user_id is not None and not isinstance(user_id, str):
            raise ConfigurationError(f"`user_id` must be a str or None, got {type(user_id).__name__} {user_id!r}.")
        if configuration is not None and not isinstance(configuration, dict):
            raise ConfigurationError(
                f"`configuration` must be a dict of the agent's configuration fields or None for the default, "
                f"got {type(configuration).__name__}.")

        self.url = url
        self.user_id = user_id or f"notebook-{uuid.uuid4().hex[:8]}"
        self.configuration = copy.deepcopy(configuration if configuration is not None else DEFAULT_CONFIGURATION)
        self.open_timeout = float(open_timeout)
        self.turn_timeout = float(turn_timeout)
        self.max_message_size = max_message_size
        self.headers = dict(headers or {})
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.run_dir = Path(run_dir) if run_dir is not None else None

        self._safe_url = _redact(url)
        self.otlp_endpoint = otlp_endpoint or _collector_endpoint(collector)
        self._otlp_api_key = getattr(collector, "api_key", None) if collector is not None else None
        self._tracer = _chat_tracing.tracer_for(self.otlp_endpoint, self._otlp_api_key)
        self._flush_on_close = True

        self.turns: list[Turn] = []
        self.unmatched_events: collections.deque[ChatEvent] = collections.deque(maxlen=UNMATCHED_EVENTS_KEPT)
        self.server_status: dict[str, Any] | None = None
        self.connection_trace_id: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None

        self._state = ConnectionState.NEW
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._status: asyncio.Future[dict[str, Any]] | None = None
        self._outstanding: collections.deque[_Pending] = collections.deque()
        self._pings: collections.deque[tuple[asyncio.Future[float], float]] = collections.deque()
        # Serializes connects, so two requests sent at once on a new client share one connection.
        self._connect_lock = asyncio.Lock()
        self._warned: set[str] = set()

    @property
    def state(self) -> ConnectionState:
        """Whether the connection is new, open or closed."""
        return self._state

    def __repr__(self) -> str:
        return f"<ChatClient {self._safe_url} {self._state.value}, user {self.user_id!r}, {len(self.turns)} turns>"

    # Sync API: thin wrappers over the async core.

    def __enter__(self) -> ChatClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> ChatClient:
        """Open the connection and wait for the agent's `connection_status` frame."""
        _loop.run(self._connect())
        return self

    def close(self) -> None:
        """Close the connection (a no-op when it is not open) and flush this client's spans."""
        _loop.run(self._close())

    def reconnect(self) -> ChatClient:
        """Close the connection if it is open and open a new one; the turns so far are kept."""
        _loop.run(self._reconnect())
        return self

    def send(self, message: str, stream_audio: bool = True, voice_id: str | None = None,
             context: dict[str, Any] | None = None, on_event: Callable[[ChatEvent], None] | None = None,
             user_id: str | None = None) -> Turn:
        """Send a `chat_request` and return its `Turn` once `complete` or `interrupted` arrives.

        `on_event(event)` is called for each frame of the turn on the package's background thread, so it
        must return quickly. Raises `ChatServerError` for an `error` frame, `ChatTimeoutError` after
        `turn_timeout` seconds, `ChatClosedError` when the connection closes.
        """
        return _loop.run(self._send(message, stream_audio, voice_id, context, on_event, user_id))

    def interrupt(self, message: str, stream_audio: bool = True, voice_id: str | None = None,
                  context: dict[str, Any] | None = None, user_id: str | None = None) -> Turn:
        """Send a new request while a turn streams and return the new turn.

        The agent cancels the streaming turn, which then ends with `interrupted=True` and the chunk indexes
        the agent reported in `turn.interruption`. With no turn streaming this is a plain `send()`.
        """
        return _loop.run(self._interrupt(message, stream_audio, voice_id, context, user_id))

    def stream(self, message: str, stream_audio: bool = True, voice_id: str | None = None,
               context: dict[str, Any] | None = None, user_id: str | None = None) -> TurnStream:
        """Send a request now and return a `TurnStream` yielding its events as they arrive."""
        stream = TurnStream(self, message, stream_audio, voice_id, context, user_id)
        stream.start()
        return stream

    def send_raw(self, frame: str | bytes | dict[str, Any]) -> Turn:
        """Send `frame` unchanged (a dict is JSON-encoded) and return the turn it starts.

        Meant for probing the server: a malformed frame gets `ChatProtocolError`. The frame carries no
        `traceparent` unless it contains one.
        """
        return _loop.run(self._send_raw(frame))

    def ping(self, timeout: float | None = None) -> float:
        """Send a protocol `ping` and return the round trip to its `pong` in ms."""
        return _loop.run(self._ping(timeout))

    def transcript(self) -> pd.DataFrame:
        """Return the session's user and assistant messages with their timings, one row per message."""
        from homunculy_nb.chat_transcript import transcript_frame

        return transcript_frame(self.turns)

    def save_transcript(self, path: str | Path) -> list[Path]:
        """Write the session's turns to `path` as JSON and Markdown (`.json` and `.md` next to each other)."""
        from homunculy_nb.chat_transcript import write_transcript

        return write_transcript(self.turns, path, url=self._safe_url, user_id=self.user_id)

    # Async API: the same cores, awaited from the caller's loop.

    async def __aenter__(self) -> ChatClient:
        await self.connect_async()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close_async()

    async def connect_async(self) -> ChatClient:
        """Open the connection; see `connect()`."""
        await _on_background(self._connect())
        return self

    async def close_async(self) -> None:
        """Close the connection; see `close()`."""
        await _on_background(self._close())

    async def reconnect_async(self) -> ChatClient:
        """Reopen the connection; see `reconnect()`."""
        await _on_background(self._reconnect())
        return self

    async def send_async(self, message: str, stream_audio: bool = True, voice_id: str | None = None,
                         context: dict[str, Any] | None = None,
                         on_event: Callable[[ChatEvent], None] | None = None, user_id: str | None = None) -> Turn:
        """Send a request and return its turn; see `send()`."""
        return await _on_background(self._send(message, stream_audio, voice_id, context, on_event, user_id))

    async def interrupt_async(self, message: str, stream_audio: bool = True, voice_id: str | None = None,
                              context: dict[str, Any] | None = None, user_id: str | None = None) -> Turn:
        """Interrupt the streaming turn with a new request; see `interrupt()`."""
        return await _on_background(self._interrupt(message, stream_audio, voice_id, context, user_id))

    def stream_async(self, message: str, stream_audio: bool = True, voice_id: str | None = None,
                     context: dict[str, Any] | None = None, user_id: str | None = None) -> TurnStream:
        """Return a `TurnStream` for `async for`; the request is sent when iteration starts."""
        return TurnStream(self, message, stream_audio, voice_id, context, user_id)

    async def send_raw_async(self, frame: str | bytes | dict[str, Any]) -> Turn:
        """Send a raw frame; see `send_raw()`."""
        return await _on_background(self._send_raw(frame))

    async def ping_async(self, timeout: float | None = None) -> float:
        """Measure a ping round trip in ms; see `ping()`."""
        return await _on_background(self._ping(timeout))

    # Core: everything below runs on the background loop.

    async def _connect(self) -> None:
        async with self._connect_lock:
            if self._state is not ConnectionState.OPEN:
                await self._open()

    async def _open(self) -> None:
        from websockets.asyncio.client import connect

        span = self._tracer.start_span("chat connect", kind=_client_kind(), attributes={"url.full": self._safe_url})
        self.connection_trace_id, _ = _chat_tracing.ids(span)
        headers = _chat_tracing.inject(span, dict(self.headers))
        started = time.perf_counter()
        try:
            ws = await connect(
                self.url, additional_headers=headers, open_timeout=self.open_timeout,
                max_size=self.max_message_size, ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout, proxy=None,
            )
        except Exception as exc:
            _end_span(span, error=str(exc))
            raise _connection_error(self._safe_url, exc, self.open_timeout) from exc

        self._ws = ws
        self._state = ConnectionState.OPEN
        self.close_code = self.close_reason = None
        self._status = asyncio.get_running_loop().create_future()
        self._reader = asyncio.get_running_loop().create_task(self._read(ws), name=f"chat reader {self._safe_url}")

        # The agent greets each connection with `connection_status` before it reads requests.
        remaining = max(self.open_timeout - (time.perf_counter() - started), 0.001)
        done, _ = await asyncio.wait((self._status,), timeout=remaining)
        if not done:
            await self._close()
            _end_span(span, error="no connection_status")
            raise ChatConnectionError(
                f"Connected to {self._safe_url}, but the server sent no `connection_status` frame within "
                f"{self.open_timeout:g} s. Check that the URL is the agent's chat endpoint (/api/v1/ws/chat).",
                self._safe_url,
            )
        if self._state is not ConnectionState.OPEN:
            _end_span(span, error="closed during greeting")
            raise self._closed_error()

        _end_span(span)
        logger.debug("Chat connection to %s open (trace %s)", self._safe_url, self.connection_trace_id)

    async def _close(self) -> None:
        ws, reader = self._ws, self._reader
        if ws is not None:
            # Graceful close handshake first (bounded by the library's close timeout), then wait for the
            # reader to see the end of the stream and fail what still waits.
            await ws.close()
            if reader is not None:
                await reader
        self._ws = self._reader = None
        if self._state is ConnectionState.OPEN:
            self._state = ConnectionState.CLOSED
        if self._flush_on_close:
            await asyncio.to_thread(_chat_tracing.force_flush, self.otlp_endpoint, self._otlp_api_key)

    async def _reconnect(self) -> None:
        if self._state is ConnectionState.OPEN:
            await self._close()
        self._state = ConnectionState.CLOSED
        await self._connect()

    async def _interrupt(self, message: str, stream_audio: bool, voice_id: str | None,
                         context: dict[str, Any] | None, user_id: str | None) -> Turn:
        if not any(not pending.abandoned for pending in self._outstanding):
            logger.debug("interrupt() found no turn streaming on %s; sending a plain request", self._safe_url)
        return await self._send(message, stream_audio, voice_id, context, None, user_id)

    async def _send(self, message: str, stream_audio: bool, voice_id: str | None, context: dict[str, Any] | None,
                    on_event: Callable[[ChatEvent], None] | None, user_id: str | None) -> Turn:
        pending = await self._start(message, stream_audio, voice_id, context, on_event, user_id, stream=False)
        return await self._wait(pending)

    async def _start(self, message: str, stream_audio: bool, voice_id: str | None,
                     context: dict[str, Any] | None, on_event: Callable[[ChatEvent], None] | None,
                     user_id: str | None, stream: bool) -> _Pending:
        if not isinstance(message, str):
            raise ConfigurationError(f"A chat message must be a str, got {type(message).__name__}.")
        if context is not None and not isinstance(context, dict):
            raise ConfigurationError(f"`context` must be a dict, got {type(context).__name__}.")

        user = user_id or self.user_id
        turn = Turn(message=message, user_id=user)
        span = self._tracer.start_span("chat turn", kind=_client_kind(), attributes={
            "url.full": self._safe_url, "enduser.id": user, "chat.message_length": len(message),
            "chat.stream_audio": bool(stream_audio),
        })
        turn.trace_id, turn.span_id = _chat_tracing.ids(span)
        request = {
            "type": "chat_request",
            "user_id": user,
            "message": message,
            "configuration": self.configuration,
            "context": _chat_tracing.inject(span, dict(context or {})),
            "stream_audio": bool(stream_audio),
            "voice_id": voice_id,
        }
        return await self._transmit(json.dumps(request), turn, span, on_event, stream)

    async def _send_raw(self, frame: str | bytes | dict[str, Any]) -> Turn:
        if isinstance(frame, dict):
            frame = json.dumps(frame)
        if not isinstance(frame, (str, bytes)):
            raise ConfigurationError(f"A raw frame must be a str, bytes or dict, got {type(frame).__name__}.")

        turn = Turn(message=None, user_id=None)
        span = self._tracer.start_span("chat raw frame", kind=_client_kind(), attributes={"url.full": self._safe_url})
        turn.trace_id, turn.span_id = _chat_tracing.ids(span)
        pending = await self._transmit(frame, turn, span, None, stream=False)
        return await self._wait(pending)

    async def _transmit(self, frame: str | bytes, turn: Turn, span: Any,
                        on_event: Callable[[ChatEvent], None] | None, stream: bool) -> _Pending:
        if self._state is ConnectionState.NEW:
            try:
                await self._connect()
            except ChatError as exc:
                _end_span(span, error=str(exc))
                raise
        if self._state is not ConnectionState.OPEN:
            _end_span(span, error="connection closed")
            raise self._closed_error()

        pending = _Pending(turn, asyncio.get_running_loop().create_future(), span,
                           queue=asyncio.Queue() if stream else None, on_event=on_event)

        # Registered before the send, because the reader may see the first response frame while `send` drains.
        self._outstanding.append(pending)
        turn.started_at = datetime.now(timezone.utc)
        turn._started = time.perf_counter()
        try:
            await self._ws.send(frame)
        except Exception as exc:
            from websockets.exceptions import ConnectionClosed

            if pending in self._outstanding:
                self._outstanding.remove(pending)
            _end_span(span, error=str(exc))
            if isinstance(exc, ConnectionClosed):
                raise self._closed_error() from exc
            raise
        return pending

    async def _wait(self, pending: _Pending, timeout: float | None = None) -> Turn:
        """Wait for `pending` to finish; on timeout it stays registered so its late frames are absorbed."""
        timeout = self.turn_timeout if timeout is None else timeout
        try:
            done, _ = await asyncio.wait((pending.done,), timeout=timeout)
        except asyncio.CancelledError:
            self._abandon(pending, "cancelled")
            raise
        if not done:
            self._abandon(pending, "timed out")
            raise _timeout_error(pending.turn, timeout)

        if pending.failure is not None:
            raise pending.failure
        if pending.turn.error is not None:
            raise server_error(pending.turn)
        return pending.turn

    def _abandon(self, pending: _Pending, why: str) -> None:
        # The agent still streams this turn, so its frames keep going to it until `complete` or
        # `interrupted` arrives. The agent sends `interrupted` when the next request comes, so the late
        # frames stay out of the next turn (unless the agent never ends the abandoned turn at all).
        if pending.done.done() or pending.abandoned:
            return
        pending.abandoned = True
        _end_span(pending.span, error=why, turn=pending.turn)

    async def _ping(self, timeout: float | None) -> float:
        if timeout is not None and not timeout > 0:
            raise ConfigurationError(
                f"The ping `timeout` must be a positive number of seconds or None, got {timeout!r}.")
        if self._state is ConnectionState.NEW:
            await self._connect()
        if self._state is not ConnectionState.OPEN:
            raise self._closed_error()

        timeout = timeout or self.ping_timeout or self.open_timeout
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pings.append((waiter, time.perf_counter()))
        try:
            await self._ws.send(json.dumps({"type": "ping"}))
        except Exception as exc:
            from websockets.exceptions import ConnectionClosed

            if isinstance(exc, ConnectionClosed):
                raise self._closed_error() from exc
            raise

        done, _ = await asyncio.wait((waiter,), timeout=timeout)
        if not done:
            raise ChatTimeoutError(f"No `pong` from {self._safe_url} within {timeout:g} s.", timeout)
        return waiter.result()

    # Receiving.

    async def _read(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in ws:
                self._on_frame(frame)
        except ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001 - the reader must always fail the waiting turns below
            logger.exception("The chat reader for %s failed", self._safe_url)
        finally:
            self._on_closed(ws)

    def _on_frame(self, frame: str | bytes) -> None:
        # Timings count from the frame's arrival, before decoding, so a large frame's parse time is excluded.
        arrived = time.perf_counter()
        current = self._current()
        event = decode_frame(frame, current.turn.elapsed_ms(arrived) if current is not None else 0.0)
        kind = event.type if event.problem is None else None

        if kind == "connection_status":
            self.server_status = event.data
            if self._status is not None and not self._status.done():
                self._status.set_result(event.data or {})
            return
        if kind == "pong":
            self._on_pong(event, arrived)
            return

        pending = self._error_target() if kind == "error" else current
        if event.problem is not None:
            self._report_problem(event, pending)
        if pending is None:
            self.unmatched_events.append(event)
            if event.problem is None:
                logger.debug("Frame %r from %s arrived outside any turn", kind, self._safe_url)
            return

        turn = pending.turn
        if pending is not current:
            event = _with_elapsed(event, turn.elapsed_ms(arrived))
        ended = turn.apply(event)
        self._deliver(pending, event)
        if ended:
            self._finish(pending)

    def _current(self) -> _Pending | None:
        return self._outstanding[0] if self._outstanding else None

    def _error_target(self) -> _Pending | None:
        # An `error` belongs to the newest request when no frame for it has arrived yet (a rejected
        # interrupting request). Otherwise it ends the turn being streamed.
        # NOTE: if a streamed turn fails while a newer request waits for its first frame, the error lands
        # on the newer one. The protocol carries no request id to tell the two apart.
        if not self._outstanding:
            return None
        newest = self._outstanding[-1]
        if not newest.turn.events:
            return newest
        return self._outstanding[0]

    def _deliver(self, pending: _Pending, event: ChatEvent) -> None:
        if pending.queue is not None:
            pending.queue.put_nowait(event)
        if pending.on_event is not None and not pending.callback_failed:
            try:
                pending.on_event(event)
            except Exception:  # noqa: BLE001 - a broken callback must not stop the reader
                pending.callback_failed = True
                logger.warning("on_event callback raised; it is not called again for this turn", exc_info=True)

    def _finish(self, pending: _Pending, failure: ChatError | None = None) -> None:
        if pending in self._outstanding:
            self._outstanding.remove(pending)
        turn = pending.turn
        pending.failure = failure
        self.turns.append(turn)

        if not pending.abandoned:
            error = failure and str(failure) or (turn.error and f"{turn.error.code}: {turn.error.message}")
            _end_span(pending.span, error=error or None, turn=turn)
        if turn.problems:
            logger.debug("Turn on %s ended with problems: %s", self._safe_url, "; ".join(turn.problems))
        if self.run_dir is not None and turn.message is not None:
            self._append_to_run_dir(turn)

        if not pending.done.done():
            pending.done.set_result(turn)
        if pending.queue is not None:
            pending.queue.put_nowait(None)

    def _on_pong(self, event: ChatEvent, arrived: float) -> None:
        while self._pings:
            waiter, sent = self._pings.popleft()
            if not waiter.done():
                waiter.set_result((arrived - sent) * 1000.0)
                return
        self.unmatched_events.append(event)

    def _on_closed(self, ws: Any) -> None:
        if ws is not self._ws and self._ws is not None:
            return
        self._state = ConnectionState.CLOSED
        self.close_code, self.close_reason = _close_frame(ws)
        if self._status is not None and not self._status.done():
            self._status.cancel()

        for pending in list(self._outstanding):
            self._finish(pending, failure=self._closed_error(pending.turn))
        for waiter, _ in self._pings:
            if not waiter.done():
                waiter.set_exception(self._closed_error())
                waiter.exception()  # marks it retrieved in case no caller waits any more
        self._pings.clear()
        logger.debug("Chat connection to %s closed with code %s", self._safe_url, self.close_code)

    def _closed_error(self, turn: Turn | None = None) -> ChatClosedError:
        code, reason = self.close_code, self.close_reason
        what = f"The connection to {self._safe_url} closed"
        if code is not None:
            what += f" with code {code}" + (f" ({reason})" if reason else "")
        if turn is not None:
            what += f" during a turn, after {len(turn.chunks)} text chunks"
        if code == 1009:
            what += f"; a frame was larger than `max_message_size` ({self.max_message_size} bytes), raise it"
        return ChatClosedError(f"{what}. Call `reconnect()` to open a new session.", self._safe_url, code, reason, turn)

    def _report_problem(self, event: ChatEvent, pending: _Pending | None) -> None:
        # The first problem of each kind is a warning; repeats only go to debug so a broken server
        # cannot flood the notebook.
        kind = (event.problem or "").split(":")[0]
        level = logging.DEBUG if kind in self._warned else logging.WARNING
        self._warned.add(kind)
        where = "outside any turn" if pending is None else "during a turn"
        logger.log(level, "Kept an unusable frame from %s %s: %s", self._safe_url, where, event.problem)

    def _append_to_run_dir(self, turn: Turn) -> None:
        assert self.run_dir is not None
        folder = self.run_dir / "chat"
        folder.mkdir(parents=True, exist_ok=True)
        record = turn.to_record() | {"url": self._safe_url}
        with open(folder / "turns.jsonl", "a", encoding="utf-8") as file:
            file.write(json.dumps(record, default=str) + "\n")


class TurnStream:
    """The events of one turn as they arrive, for `for` and for `async for`.

    Iteration ends after the frame that ends the turn. If that frame was an `error`, iteration then
    raises the `ChatServerError`; a closed connection or a timeout raise as in `send()`. `turn` contains
    what arrived so far at any point.
    """

    def __init__(self, client: ChatClient, message: str, stream_audio: bool, voice_id: str | None,
                 context: dict[str, Any] | None, user_id: str | None) -> None:
        self.client = client
        self._request = (message, stream_audio, voice_id, context, None, user_id)
        self._pending: _Pending | None = None
        self._deadline = 0.0
        self._finished = False

    @property
    def turn(self) -> Turn | None:
        """The turn being streamed, None before the request is sent."""
        return self._pending.turn if self._pending else None

    def start(self) -> TurnStream:
        """Send the request now instead of at the first iteration."""
        if self._pending is None:
            self._pending = _loop.run(self._start())
        return self

    async def _start(self) -> _Pending:
        pending = await self.client._start(*self._request, stream=True)
        self._deadline = time.perf_counter() + self.client.turn_timeout
        return pending

    def __iter__(self) -> Iterator[ChatEvent]:
        return self

    def __next__(self) -> ChatEvent:
        self.start()
        event = _loop.run(self._next())
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self) -> AsyncIterator[ChatEvent]:
        return self

    async def __anext__(self) -> ChatEvent:
        if self._pending is None:
            self._pending = await _on_background(self._start())
        event = await _on_background(self._next())
        if event is None:
            raise StopAsyncIteration
        return event

    async def _next(self) -> ChatEvent | None:
        pending = self._pending
        assert pending is not None and pending.queue is not None
        if self._finished:
            return None

        remaining = max(self._deadline - time.perf_counter(), 0.0)
        getter = asyncio.ensure_future(pending.queue.get())
        done, _ = await asyncio.wait((getter,), timeout=remaining)
        if not done:
            getter.cancel()
            self._finished = True
            self.client._abandon(pending, "timed out")
            raise _timeout_error(pending.turn, self.client.turn_timeout)

        event = getter.result()
        if event is not None:
            return event

        self._finished = True
        if pending.failure is not None:
            raise pending.failure
        if pending.turn.error is not None:
            raise server_error(pending.turn)
        return None


# Helpers.

def _client_kind() -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind.CLIENT


def _end_span(span: Any, error: str | None = None, turn: Turn | None = None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if turn is not None:
        span.set_attributes({
            "chat.text_chunks": len(turn.chunks),
            "chat.audio_chunks": len(turn.audio_chunks),
            "chat.interrupted": turn.interrupted,
        })
        if turn.time_to_first_chunk_ms is not None:
            span.set_attribute("chat.time_to_first_chunk_ms", turn.time_to_first_chunk_ms)
        if turn.error is not None:
            span.set_attribute("chat.error_code", turn.error.code)
    if error:
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def _close_frame(ws: Any) -> tuple[int | None, str | None]:
    # The code the peer sent, or the one this side sent when the peer's never arrived (a client that
    # closes with 1009 on an oversized frame rarely gets the echo).
    protocol = ws.protocol
    frame = protocol.close_rcvd or protocol.close_sent
    if frame is None:
        return ws.close_code, ws.close_reason
    return int(frame.code), frame.reason


def _collector_endpoint(collector: Any) -> str | None:
    if collector is None:
        return None
    endpoint = collector.endpoints.get("grpc")
    if endpoint is None:
        raise ConfigurationError(
            "The collector has no OTLP gRPC receiver, which the chat client's spans need. Start it with a "
            "`grpc_port` (0 picks a free port), or pass `otlp_endpoint`.")
    return endpoint


def _redact(url: str) -> str:
    # Credentials in the URL's user info and every query value (an API key or token is often passed as
    # `?token=...`) are replaced wherever the URL is shown: reprs, errors, logs, spans.
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        parts = parts._replace(netloc=f"REDACTED:REDACTED@{host}" + (f":{parts.port}" if parts.port else ""))
    if parts.query:
        query = [(name, "REDACTED") for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
        parts = parts._replace(query=urlencode(query, safe="REDACTED"))
    return urlunsplit(parts)


def _with_elapsed(event: ChatEvent, elapsed_ms: float) -> ChatEvent:
    return ChatEvent(event.type, event.data, elapsed_ms, event.raw, event.problem)


def _connection_error(url: str, exc: BaseException, open_timeout: float) -> ChatConnectionError:
    from websockets.exceptions import InvalidStatus, InvalidURI

    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = "Check the path (the agent serves /api/v1/ws/chat)." if status == 404 else "Check the URL and headers."
        return ChatConnectionError(f"The server at {url} rejected the WebSocket handshake with HTTP {status}. {hint}",
                                   url, exc)
    if isinstance(exc, InvalidURI):
        return ChatConnectionError(f"{url!r} is not a valid WebSocket URL: {exc.msg}.", url, exc)
    if isinstance(exc, TimeoutError):
        return ChatConnectionError(
            f"Opening {url} timed out after {open_timeout:g} s. Check that the agent is up, or raise `open_timeout`.",
            url, exc)
    if isinstance(exc, OSError):
        return ChatConnectionError(
            f"Could not connect to {url}: {exc.strerror or exc}. Check that the agent is running and healthy "
            "(`stack.status()`).", url, exc)
    return ChatConnectionError(f"Could not open {url}: {type(exc).__name__}: {exc}.", url, exc)


def _timeout_error(turn: Turn, timeout: float) -> ChatTimeoutError:
    last = turn.events[-1] if turn.events else None
    arrived = (f"{len(turn.chunks)} text chunks ({len(turn.text)} characters) and {len(turn.audio_chunks)} audio "
               f"chunks arrived")
    if last is not None:
        arrived += f", the last a `{last.type}` frame at {last.elapsed_ms:.0f} ms"
    return ChatTimeoutError(
        f"The turn for {_preview(turn.message)} got no `complete` within {timeout:g} s: {arrived}. The connection "
        "stays open and the next request interrupts this turn. Raise `turn_timeout` if the agent is slow.",
        timeout, turn)


def _preview(message: str | None, limit: int = 40) -> str:
    if message is None:
        return "a raw frame"
    return repr(message if len(message) <= limit else message[:limit] + "…")


def __getattr__(name: str) -> Any:
    # The load driver imports pandas and tqdm, so it is loaded only when used.
    if name in ("run_sessions", "run_sessions_async", "summarize", "LoadSummary"):
        from homunculy_nb import chat_load

        return getattr(chat_load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
