"""Concurrent chat sessions against the agent, one DataFrame row per turn, and their summary.

`run_sessions` runs every session on the package's background loop. The number of turns is fixed
(`sessions * turns` rows, always), concurrency is capped, and an optional `timeout` bounds the whole run:
turns it cuts off are reported, never dropped. Each session closes its connection in a `finally`, so no
connection outlives the call, whether it returns, times out or is interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from homunculy_nb import _chat_tracing, _loop
from homunculy_nb.chat import (
    ChatClient, ChatClosedError, ChatConnectionError, ChatError, ChatServerError, ChatTimeoutError, ConnectionState,
)
from homunculy_nb.chat_turn import Turn
from homunculy_nb.errors import ConfigurationError

logger = logging.getLogger(__name__)

DEFAULT_MESSAGES = (
    "Hello! How are you today?",
    "Tell me one interesting fact about octopuses.",
    "What is a good name for a pet robot?",
    "Summarize our conversation in one sentence.",
    "Thanks, goodbye!",
)

# Client-side error codes, next to the agent's own codes (INVALID_REQUEST, ...) in `error_code`.
CONNECTION_FAILED = "CONNECTION_FAILED"
CONNECTION_CLOSED = "CONNECTION_CLOSED"
TURN_TIMEOUT = "TURN_TIMEOUT"
CANCELLED = "CANCELLED"
NOT_STARTED = "NOT_STARTED"
CLIENT_ERROR = "CLIENT_ERROR"

TIMING_COLUMNS = ("time_to_first_chunk_ms", "time_to_first_audio_ms", "duration_ms")

COLUMN_TYPES = {
    "session": "Int64",
    "turn": "Int64",
    "user_id": "string",
    "message": "string",
    "started_at": "datetime64[ns, UTC]",
    "finished_at": "datetime64[ns, UTC]",
    "time_to_first_chunk_ms": "Float64",
    "time_to_first_audio_ms": "Float64",
    "duration_ms": "Float64",
    "text_chunks": "Int64",
    "audio_chunks": "Int64",
    "text_bytes": "Int64",
    "audio_bytes": "Int64",
    "interrupted": "boolean",
    "problems": "Int64",
    "error_code": "string",
    "error_message": "string",
    "trace_id": "string",
}

Messages = Sequence[str] | Callable[[int, int], str]


def run_sessions(url: str, sessions: int = 50, turns: int = 3, concurrency: int = 50,
                 messages: Messages | None = None, think_time_ms: float = 0, stream_audio: bool = True,
                 *, configuration: dict[str, Any] | None = None, turn_timeout: float = 120.0,
                 open_timeout: float = 10.0, timeout: float | None = None, collector: Any = None,
                 otlp_endpoint: str | None = None, user_id_prefix: str = "load",
                 progress: bool = True) -> pd.DataFrame:
    """Run `sessions` chat sessions of `turns` requests each, at most `concurrency` at a time.

    `messages` is a list used in turn order (wrapping around) or a callable `(session, turn) -> str`.
    `turn_timeout` and `open_timeout` bound each turn and each connection, so every run ends; `timeout`
    also caps the whole run (None for no cap). All three are in seconds. Client spans go to `collector` or `otlp_endpoint` as in `ChatClient`.
    `progress` shows a progress bar (a widget in a notebook, text in a terminal).

    Returns one row per planned turn; see `COLUMN_TYPES` for the columns. `error_code` contains the agent's
    code or one of `CONNECTION_FAILED`, `CONNECTION_CLOSED`, `TURN_TIMEOUT`, `EMPTY_RESPONSE` (completed with
    no text), `CANCELLED` (cut off by `timeout`), `NOT_STARTED` (never sent before `timeout`).
    """
    driver = _Driver.plan(url, sessions, turns, concurrency, messages, think_time_ms, stream_audio, configuration,
                          turn_timeout, open_timeout, timeout, collector, otlp_endpoint, user_id_prefix, progress)
    return _loop.run(driver.run())


async def run_sessions_async(url: str, sessions: int = 50, turns: int = 3, concurrency: int = 50,
                             messages: Messages | None = None, think_time_ms: float = 0, stream_audio: bool = True,
                             *, configuration: dict[str, Any] | None = None, turn_timeout: float = 120.0,
                             open_timeout: float = 10.0, timeout: float | None = None, collector: Any = None,
                             otlp_endpoint: str | None = None, user_id_prefix: str = "load",
                             progress: bool = True) -> pd.DataFrame:
    """Run the sessions from any event loop; see `run_sessions()`."""
    driver = _Driver.plan(url, sessions, turns, concurrency, messages, think_time_ms, stream_audio, configuration,
                          turn_timeout, open_timeout, timeout, collector, otlp_endpoint, user_id_prefix, progress)
    if _loop.in_loop_thread():
        return await driver.run()
    return await asyncio.wrap_future(_loop.submit(driver.run()))


class _Driver:
    """Run one `run_sessions` call and keep its plan, rows and progress bar."""

    @classmethod
    def plan(cls, url: str, sessions: int, turns: int, concurrency: int, messages: Messages | None,
             think_time_ms: float, stream_audio: bool, configuration: dict[str, Any] | None, turn_timeout: float,
             open_timeout: float, timeout: float | None, collector: Any, otlp_endpoint: str | None,
             user_id_prefix: str, progress: bool) -> _Driver:
        """Check the arguments and create the driver and its progress bar on the caller's thread."""
        sessions, turns, concurrency = _check_counts(sessions, turns, concurrency, think_time_ms, timeout)
        pick = _message_picker(messages)
        client_options = dict(configuration=configuration, turn_timeout=turn_timeout, open_timeout=open_timeout,
                              collector=collector, otlp_endpoint=otlp_endpoint)
        # Building one client checks the URL, timeouts and telemetry target before any session starts.
        ChatClient(url, **client_options)
        # A notebook progress widget is displayed where it is created, so it is created here, in the cell's
        # thread, and only updated from the background loop.
        from tqdm.auto import tqdm

        bar = tqdm(total=sessions * turns, desc="chat turns", unit="turn", disable=not progress)
        return cls(url, sessions, turns, concurrency, pick, think_time_ms / 1000.0, stream_audio, client_options,
                   f"{user_id_prefix}-{uuid.uuid4().hex[:6]}", bar, timeout)

    def __init__(self, url: str, sessions: int, turns: int, concurrency: int, pick: Callable[[int, int], str],
                 think_time: float, stream_audio: bool, client_options: dict[str, Any], run_id: str,
                 bar: Any, timeout: float | None) -> None:
        self.url = url
        self.sessions = sessions
        self.turns = turns
        self.pick = pick
        self.think_time = think_time
        self.stream_audio = stream_audio
        self.client_options = client_options
        self.run_id = run_id
        self.bar = bar
        self.timeout = timeout
        self.concurrency = concurrency
        self.rows: dict[tuple[int, int], dict[str, Any]] = {}
        self.errors = 0
        # The (endpoint, API key) of the sessions' tracer, flushed once when the run ends.
        self.flush: tuple[str | None, str | None] | None = None

    async def run(self) -> pd.DataFrame:
        semaphore = asyncio.Semaphore(self.concurrency)
        for session in range(self.sessions):
            for turn in range(self.turns):
                self.rows[session, turn] = _row(session, turn, self._user(session), self.pick(session, turn),
                                                error_code=NOT_STARTED)

        tasks = [asyncio.ensure_future(self._session(session, semaphore)) for session in range(self.sessions)]
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.timeout)
            if pending:
                logger.warning("run_sessions stopped %d unfinished sessions after %s s", len(pending), self.timeout)
        finally:
            # Cancel whatever still runs (the timeout expired or the caller was interrupted) and wait until
            # every session has closed its connection.
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            self.bar.close()
            if self.flush is not None:
                await asyncio.to_thread(_chat_tracing.force_flush, *self.flush)

        # Chat failures are rows; anything else a session raised is a bug and must not hide behind rows.
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome
        return _frame([self.rows[key] for key in sorted(self.rows)])

    def _user(self, session: int) -> str:
        return f"{self.run_id}-{session}"

    async def _session(self, session: int, semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            client = ChatClient(self.url, user_id=self._user(session), **self.client_options)
            client._flush_on_close = False
            self.flush = (client.otlp_endpoint, client._otlp_api_key)
            try:
                for turn in range(self.turns):
                    if turn and self.think_time:
                        await asyncio.sleep(self.think_time)
                    await self._turn(client, session, turn)
            finally:
                await asyncio.shield(_close_quietly(client))

    async def _turn(self, client: ChatClient, session: int, index: int) -> None:
        message = self.rows[session, index]["message"]
        started_at = datetime.now(timezone.utc)
        turn: Turn | None = None
        code = message_text = None
        try:
            if client.state is ConnectionState.CLOSED:
                await client._reconnect()
            turn = await client._send(message, self.stream_audio, None, None, None, None)
        except ChatServerError as exc:
            turn, code, message_text = exc.turn, exc.code, exc.server_message
        except ChatTimeoutError as exc:
            turn, code, message_text = exc.turn, TURN_TIMEOUT, str(exc)
        except ChatClosedError as exc:
            turn, code, message_text = exc.turn, CONNECTION_CLOSED, str(exc)
        except ChatConnectionError as exc:
            code, message_text = CONNECTION_FAILED, str(exc)
        except ChatError as exc:
            code, message_text = CLIENT_ERROR, str(exc)
        except asyncio.CancelledError:
            self._record(session, index, _row(session, index, client.user_id, message, started_at=started_at,
                                              error_code=CANCELLED, error_message="cut off by the run's timeout or an interrupt"))
            raise

        row = _row(session, index, client.user_id, message, turn=turn, started_at=started_at)
        if code is not None:
            row["error_code"], row["error_message"] = code, message_text
        self._record(session, index, row)

    def _record(self, session: int, index: int, row: dict[str, Any]) -> None:
        self.rows[session, index] = row
        if row["error_code"] is not None:
            self.errors += 1
            self.bar.set_postfix(errors=self.errors, refresh=False)
        self.bar.update(1)


async def _close_quietly(client: ChatClient) -> None:
    try:
        await client._close()
    except Exception:  # noqa: BLE001 - closing is best effort; the server may already be gone
        logger.debug("Closing a load session's connection failed", exc_info=True)


def _row(session: int, index: int, user_id: str, message: str, turn: Turn | None = None,
         started_at: datetime | None = None, error_code: str | None = None,
         error_message: str | None = None) -> dict[str, Any]:
    row = {column: None for column in COLUMN_TYPES}
    row.update(session=session, turn=index, user_id=user_id, message=message, started_at=started_at,
               error_code=error_code, error_message=error_message)
    if turn is None:
        return row

    row.update(
        started_at=turn.started_at,
        finished_at=turn.finished_at,
        time_to_first_chunk_ms=turn.time_to_first_chunk_ms,
        time_to_first_audio_ms=turn.time_to_first_audio_ms,
        duration_ms=turn.duration_ms,
        text_chunks=len(turn.chunks),
        audio_chunks=len(turn.audio_chunks),
        text_bytes=len(turn.text.encode()),
        audio_bytes=sum(len(chunk.data) for chunk in turn.audio_chunks),
        interrupted=turn.interrupted,
        problems=len(turn.problems),
        trace_id=turn.trace_id,
        error_code=turn.error_code,
        error_message=turn.error.message if turn.error else ("completed with no text" if turn.error_code else None),
    )
    return row


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMN_TYPES)).astype(COLUMN_TYPES)


def _check_counts(sessions: int, turns: int, concurrency: int, think_time_ms: float,
                  timeout: float | None) -> tuple[int, int, int]:
    """Return the counts as plain ints; numpy integers from a notebook are accepted, floats and bools are not."""
    counts = []
    for name, value in (("sessions", sessions), ("turns", turns), ("concurrency", concurrency)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ConfigurationError(f"`{name}` must be a positive int, got {value!r}.")
        counts.append(int(value))
    if not 0 <= think_time_ms < math.inf:
        raise ConfigurationError(f"`think_time_ms` must be a finite number of ms, zero or more, got {think_time_ms!r}.")
    if timeout is not None and not timeout > 0:
        raise ConfigurationError(f"`timeout` must be a positive number of seconds or None, got {timeout!r}.")
    return counts[0], counts[1], counts[2]


def _message_picker(messages: Messages | None) -> Callable[[int, int], str]:
    if messages is None:
        messages = DEFAULT_MESSAGES
    if callable(messages):
        return messages
    # Copied first, because checking a generator would consume it.
    chosen = None if isinstance(messages, (str, bytes)) else _as_list(messages)
    if not chosen or not all(isinstance(message, str) for message in chosen):
        raise ConfigurationError(
            "`messages` must be a non-empty list of str or a callable (session, turn) -> str, "
            f"got {messages!r:.80}.")
    return lambda session, turn: chosen[turn % len(chosen)]


def _as_list(messages: Any) -> list[Any] | None:
    try:
        return list(messages)
    except TypeError:
        return None


# Summary.

@dataclass(frozen=True)
class LoadSummary:
    """Percentiles of each timing and error counts per code for a `run_sessions` result."""

    turns: int
    errors: pd.Series
    timings: pd.DataFrame
    turns_per_second: float | None

    @property
    def error_count(self) -> int:
        """The number of turns with any error code."""
        return int(self.errors.sum())

    def __repr__(self) -> str:
        rate = "-" if self.turns_per_second is None else f"{self.turns_per_second:.1f}"
        errors = ", ".join(f"{code} {count}" for code, count in self.errors.items()) or "none"
        return (f"{self.turns} turns, {rate} turns/s, errors: {errors}\n"
                f"{self.timings.round(1).to_string()}")

    def _repr_html_(self) -> str:
        rate = "-" if self.turns_per_second is None else f"{self.turns_per_second:.1f}"
        errors = self.errors.to_frame("count").to_html() if len(self.errors) else "<p>No errors.</p>"
        return (f"<p>{self.turns} turns, {rate} turns/s</p>{self.timings.round(1).to_html()}"
                f"<p>Errors per code</p>{errors}")


def summarize(turns: pd.DataFrame) -> LoadSummary:
    """Summarize a `run_sessions` frame: count, p50, p95, p99 and max of each timing in ms, errors per code.

    Percentiles use linear interpolation (`Series.quantile`) over the turns that have the timing.
    """
    if not isinstance(turns, pd.DataFrame):
        raise ConfigurationError(
            f"summarize() needs the DataFrame that run_sessions() returns, got {type(turns).__name__}.")
    missing = [column for column in ("error_code", *TIMING_COLUMNS) if column not in turns.columns]
    if missing:
        raise ConfigurationError(f"summarize() needs a run_sessions() frame; the columns {missing} are missing.")

    records = {}
    for column in TIMING_COLUMNS:
        values = turns[column].dropna().astype("float64")
        records[column] = {
            "count": len(values),
            "p50": values.quantile(0.50) if len(values) else math.nan,
            "p95": values.quantile(0.95) if len(values) else math.nan,
            "p99": values.quantile(0.99) if len(values) else math.nan,
            "max": values.max() if len(values) else math.nan,
        }
    timings = pd.DataFrame.from_dict(records, orient="index")
    timings.index.name = "timing"

    errors = turns["error_code"].dropna().value_counts().astype("int64")
    errors.index.name = "error_code"
    errors.name = "count"
    return LoadSummary(len(turns), errors, timings, _turns_per_second(turns))


def _turns_per_second(turns: pd.DataFrame) -> float | None:
    if not {"started_at", "finished_at"} <= set(turns.columns):
        return None
    finished = turns["finished_at"].dropna()
    started = turns["started_at"].dropna()
    if finished.empty or started.empty:
        return None
    seconds = (finished.max() - started.min()).total_seconds()
    return len(finished) / seconds if seconds > 0 else None
