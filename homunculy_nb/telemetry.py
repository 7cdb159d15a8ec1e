"""The telemetry store: bounded columns per signal, pandas frames built on demand, and the query API.

Receivers hand `homunculy_nb.otlp.Batch` objects to `TelemetryStore.append`, which keeps each one as a
chunk of encoded columns (see `COLUMN_TYPES`). A chunk is never changed after it is appended (eviction
replaces a chunk by a sliced copy), so a frame can be built from a snapshot of chunk references
without holding the lock.
The frame of each signal is cached until new data arrives. The next request then converts only the
rows appended since and concatenates them to the cached frame.

`TelemetryQueries` defines the query methods (`spans`, `traces`, `trace`, `logs`, `metrics`). The live
store and a saved run (`homunculy_nb.run`) both provide them on top of one frame per signal.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from homunculy_nb.errors import ConfigurationError, HomunculyError
from homunculy_nb.otlp import SIGNALS, SPAN_KIND_NAMES, STATUS_CODE_NAMES, Batch

logger = logging.getLogger(__name__)

DEFAULT_LIMITS = {"spans": 1_000_000, "logs": 1_000_000, "metrics": 5_000_000}
"""Default maximum number of stored items per signal; the oldest are evicted beyond it."""

COLUMN_TYPES: dict[str, dict[str, str]] = {
    "spans": {
        "trace_id": "hex", "span_id": "hex", "parent_span_id": "hex", "name": "str", "kind": "enum",
        "service_name": "str_runs", "service_instance_id": "str_runs", "scope_name": "str_runs",
        "start_time": "time", "end_time": "time", "status_code": "enum", "status_message": "str",
        "attributes": "object", "resource_attributes": "object_runs", "events": "object", "links": "object",
    },
    "logs": {
        "time": "time", "observed_time": "time", "severity_number": "Int64", "severity_text": "str",
        "body": "object", "service_name": "str", "service_instance_id": "str", "scope_name": "str",
        "trace_id": "hex", "span_id": "hex", "attributes": "object", "resource_attributes": "object",
    },
    "metrics": {
        "name": "str", "description": "str", "unit": "str", "type": "str", "service_name": "str",
        "service_instance_id": "str", "scope_name": "str", "attributes": "object",
        "resource_attributes": "object", "start_time": "time", "time": "time", "value": "float",
        "value_int": "Int64", "count": "Int64", "sum": "float", "min": "float", "max": "float",
        "bucket_counts": "object", "explicit_bounds": "object", "exponential_buckets": "object",
        "quantiles": "object", "exemplars": "object", "is_monotonic": "boolean",
        "aggregation_temporality": "str",
    },
}
"""The encoding of each column in a batch, which also decides its pandas type.

- "hex": ids of one width concatenated in one bytes object (all zero when absent) -> hex strings.
- "time": uint64 nanoseconds since the epoch in one bytes object (0 when absent) -> UTC datetime64[ns].
- "enum": one uint8 code per item in a bytes object -> the name from `ENUM_NAMES`.
- "str_runs", "object_runs": a list of (value, count) runs, for values shared by a resource or scope.
- "str", "object", "float", "Int64", "boolean": a list with one value per item.

`spans` frames also get `duration_ms` after `end_time`.
"""

ENUM_NAMES = {"kind": SPAN_KIND_NAMES, "status_code": STATUS_CODE_NAMES}

OBJECT_COLUMNS = {signal: [c for c, t in types.items() if t.startswith("object")] for signal, types in COLUMN_TYPES.items()}

SEVERITY_NUMBERS = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "WARNING": 13, "ERROR": 17, "FATAL": 21,
                    "CRITICAL": 21}
"""The lowest OTLP severity number of each severity name."""

STATS_COLUMNS = ("received", "accepted", "rejected", "evicted", "stored")

_INT64_MAX = np.iinfo(np.int64).max
_NAT = np.iinfo(np.int64).min


class TraceNotFoundError(HomunculyError, LookupError):
    """Raised by `trace(trace_id)` when no stored span has that trace id."""


# --- column conversion -------------------------------------------------------------------------------


def _time_array(packed: bytes) -> pd.arrays.DatetimeArray:
    """Convert packed uint64 nanoseconds since the epoch into UTC datetime64[ns].

    0 means absent, and times past the year 2262 do not fit datetime64[ns]; both become NaT.
    """
    unsigned = np.frombuffer(packed, dtype=np.uint64)
    nanos = unsigned.astype(np.int64)
    nanos[(unsigned == 0) | (unsigned > _INT64_MAX)] = _NAT
    return pd.arrays.DatetimeArray._from_sequence(nanos.view("M8[ns]")).tz_localize("UTC")


# The two lowercase hex digits of every byte value, as one little-endian uint16 per byte.
_HEX_PAIRS = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), dtype="<u2")


def _hex_array(packed: bytes, count: int) -> Any:
    """Convert `count` concatenated ids of one width into lowercase hex strings; all-zero ids are missing.

    The hex digits of every id are written into one buffer with numpy and wrapped as an Arrow string
    array, with no Python string per id.
    """
    if count == 0:
        return pd.array([], dtype="str")
    raw = np.frombuffer(packed, dtype=np.uint8)
    width = raw.size // count
    digits = _HEX_PAIRS[raw]
    offsets = np.arange(0, (count + 1) * width * 2, width * 2, dtype=np.int64)
    present = raw.reshape(count, width).any(axis=1)
    validity = None if present.all() else pa.py_buffer(np.packbits(present, bitorder="little"))
    array = pa.Array.from_buffers(pa.large_string(), count, [validity, pa.py_buffer(offsets), pa.py_buffer(digits)])
    return pd.array(array, dtype="str")


def _runs_array(kind: str, parts: list[list[tuple[Any, int]]]) -> Any:
    values = [value for part in parts for value, _ in part]
    counts = np.array([count for part in parts for _, count in part], dtype=np.int64)
    if kind == "str_runs":
        positions = np.repeat(np.arange(len(values)), counts)
        return pd.array(pc.take(pa.array(values, type=pa.string()), pa.array(positions)), dtype="str")
    return np.repeat(np.fromiter(values, dtype=object, count=len(values)), counts)


def to_pandas_column(kind: str, name: str, parts: list[Any], count: int) -> Any:
    """Convert the encoded parts of one column (one per chunk) into the pandas array for its kind."""
    if kind == "hex":
        return _hex_array(b"".join(parts), count)
    if kind == "time":
        return _time_array(b"".join(parts))
    if kind == "enum":
        codes = np.frombuffer(b"".join(parts), dtype=np.uint8)
        return pd.array(pc.take(pa.array(ENUM_NAMES[name], type=pa.string()), pa.array(codes)), dtype="str")
    if kind in ("str_runs", "object_runs"):
        return _runs_array(kind, parts)

    values = parts[0] if len(parts) == 1 else chain.from_iterable(parts)
    if kind == "str":
        return pd.array(pa.array(values, type=pa.string(), size=count), dtype="str")
    if kind == "object":
        return np.fromiter(values, dtype=object, count=count)
    values = values if isinstance(values, list) else list(values)
    if kind == "float":
        return np.array(values, dtype=np.float64)
    return pd.array(values, dtype=kind)


def slice_column(kind: str, values: Any, cut: int, size: int) -> Any:
    """Drop the first `cut` of the `size` items of one encoded column."""
    if kind in ("hex", "time", "enum"):
        width = len(values) // size if size else 0
        return values[cut * width:]
    if kind in ("str_runs", "object_runs"):
        kept = []
        for value, count in values:
            if cut >= count:
                cut -= count
                continue
            kept.append((value, count - cut))
            cut = 0
        return kept
    return values[cut:]


def build_frame(signal: str, columns: dict[str, Any], count: int) -> pd.DataFrame:
    """Build a signal's DataFrame from the encoded columns of one batch of `count` items."""
    return build_frame_from_chunks(signal, [columns], count)


def build_frame_from_chunks(signal: str, chunks: list[dict[str, Any]], count: int) -> pd.DataFrame:
    """Build a signal's DataFrame from chunks of encoded columns, converting each column in one pass."""
    data = {}
    for name, kind in COLUMN_TYPES[signal].items():
        data[name] = to_pandas_column(kind, name, [chunk[name] for chunk in chunks], count)
        if name == "end_time" and signal == "spans":
            data["duration_ms"] = _duration_ms(data["start_time"], data["end_time"])
    return pd.DataFrame(data, copy=False)


def _duration_ms(start: Any, end: Any) -> np.ndarray:
    start_ns = np.asarray(start.asi8, dtype=np.int64)
    end_ns = np.asarray(end.asi8, dtype=np.int64)
    duration = (end_ns - start_ns) / 1e6
    duration[(start_ns == _NAT) | (end_ns == _NAT)] = np.nan
    return duration


def empty_frame(signal: str) -> pd.DataFrame:
    """Return the signal's DataFrame with no rows and the full set of typed columns."""
    empty = {"hex": b"", "time": b"", "enum": b""}
    return build_frame(signal, {name: empty.get(kind, []) for name, kind in COLUMN_TYPES[signal].items()}, 0)


# --- the bounded store -------------------------------------------------------------------------------


@dataclass
class _Chunk:
    start: int
    columns: dict[str, list[Any]]
    size: int


_MAX_ARROW_CHUNKS = 64


def _compact_string_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Merge the Arrow chunks of string columns once repeated appends have split them into many.

    Each incremental `concat` adds one Arrow chunk per string column; a notebook that polls for hours
    would otherwise slow every later query on those columns.
    """
    for name in frame.columns:
        values = frame[name].array
        if not isinstance(values, pd.arrays.ArrowStringArray):
            continue
        chunked = values.__arrow_array__()
        if isinstance(chunked, pa.ChunkedArray) and chunked.num_chunks > _MAX_ARROW_CHUNKS:
            frame[name] = pd.array(chunked.combine_chunks(), dtype=frame[name].dtype)
    return frame


def _slice_chunk(signal: str, chunk: _Chunk, cut: int) -> dict[str, Any]:
    types = COLUMN_TYPES[signal]
    return {name: slice_column(types[name], values, cut, chunk.size) for name, values in chunk.columns.items()}


class SignalTable:
    """The stored items of one signal: chunks of encoded columns covering rows [first, next)."""

    def __init__(self, signal: str, limit: int) -> None:
        self.signal = signal
        self.limit = limit
        self.counts = dict.fromkeys(STATS_COLUMNS[:-1], 0)
        self._lock = threading.Lock()
        self._chunks: deque[_Chunk] = deque()
        self._first = 0
        self._next = 0
        self._cache: tuple[int, int, pd.DataFrame] | None = None

    def __len__(self) -> int:
        return self._next - self._first

    def append(self, batch: Batch) -> int:
        """Store a batch, evicting the oldest rows beyond the limit; return how many were evicted."""
        size = batch.size
        with self._lock:
            self.counts["received"] += batch.received
            self.counts["rejected"] += batch.rejected
            self.counts["accepted"] += size
            if size:
                self._chunks.append(_Chunk(self._next, batch.columns, size))
                self._next += size
            evicted = self._evict()
            self.counts["evicted"] += evicted
        return evicted

    def _evict(self) -> int:
        excess = self._next - self._first - self.limit
        if excess <= 0:
            return 0

        new_first = self._first + excess
        while self._chunks and self._chunks[0].start + self._chunks[0].size <= new_first:
            self._chunks.popleft()
        if self._chunks and self._chunks[0].start < new_first:
            # Keep the newest rows of a partly evicted chunk; a sliced copy leaves snapshots intact.
            chunk = self._chunks[0]
            cut = new_first - chunk.start
            self._chunks[0] = _Chunk(new_first, _slice_chunk(self.signal, chunk, cut), chunk.size - cut)
        self._first = new_first
        return excess

    def clear(self) -> None:
        """Drop every stored row; the counters keep counting."""
        with self._lock:
            self._chunks.clear()
            self._first = self._next
            self._cache = None

    def frame(self) -> pd.DataFrame:
        """Return the stored rows as a DataFrame, reusing the cached frame for rows seen before."""
        with self._lock:
            first, end = self._first, self._next
            cache = self._cache
            if cache is not None and cache[0] == first and cache[1] == end:
                return cache[2]
            reuse = cache is not None and cache[0] <= first <= cache[1]
            new_from = cache[1] if reuse else first
            chunks = [chunk for chunk in self._chunks if chunk.start + chunk.size > new_from]

        new_rows = self._gather(chunks, new_from)
        if reuse and cache is not None:
            kept = cache[2].iloc[first - cache[0]:]
            frame = pd.concat([kept, new_rows], ignore_index=True) if len(new_rows) else kept.reset_index(drop=True)
            frame = _compact_string_columns(frame)
        else:
            frame = new_rows

        with self._lock:
            if self._cache is None or self._cache[1] <= end:
                self._cache = (first, end, frame)
        return frame

    def _gather(self, chunks: list[_Chunk], new_from: int) -> pd.DataFrame:
        if not chunks:
            return empty_frame(self.signal)
        parts = []
        count = 0
        for chunk in chunks:
            cut = max(0, new_from - chunk.start)
            parts.append(_slice_chunk(self.signal, chunk, cut) if cut else chunk.columns)
            count += chunk.size - cut
        return build_frame_from_chunks(self.signal, parts, count)


Callback = Callable[[str, pd.DataFrame], Any]


class _Dispatcher:
    """Calls `on_receive` callbacks on one background thread, so a slow view never delays ingest."""

    def __init__(self) -> None:
        self._subscribers: dict[int, tuple[Callback, frozenset[str]]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def subscribe(self, callback: Callback, signals: frozenset[str]) -> Callable[[], None]:
        with self._lock:
            key = self._next_id
            self._next_id += 1
            self._subscribers[key] = (callback, signals)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def wants(self, signal: str) -> bool:
        return any(signal in signals for _, signals in list(self._subscribers.values()))

    def publish(self, batch: Batch) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="homunculy-nb-on-receive", daemon=True)
                self._thread.start()
        self._queue.put(batch)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            with self._lock:
                targets = [cb for cb, signals in self._subscribers.values() if batch.signal in signals]
            if not targets:
                continue
            frame = build_frame(batch.signal, batch.columns, batch.size)
            for callback in targets:
                try:
                    callback(batch.signal, frame)
                except Exception:
                    logger.exception("An on_receive callback %r failed on a batch of %d %s; ingest continues",
                                     callback, len(frame), batch.signal)

    def close(self) -> None:
        """Stop the thread after the batches already queued; a later batch starts a new one."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout=5)


# --- queries -----------------------------------------------------------------------------------------


def _utc(value: Any, argument: str) -> pd.Timestamp:
    """Turn a `since`/`until` argument into a UTC timestamp; a timedelta counts back from now."""
    if isinstance(value, timedelta):
        return pd.Timestamp.now(tz="UTC") - value
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            f"`{argument}={value!r}` is not a time. Pass a datetime, a pandas Timestamp, an ISO 8601 string "
            f"or a timedelta (counted back from now)."
        ) from exc
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _names(value: str | Iterable[str], argument: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    try:
        return [str(item) for item in value]
    except TypeError:
        raise ConfigurationError(f"`{argument}={value!r}` must be a string or a list of strings.") from None


def _trace_id(value: str) -> str:
    trace_id = str(value).strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        raise ConfigurationError(f"Trace id {value!r} is not 32 hex digits. Copy it from the `trace_id` column.")
    return trace_id


def _select(frame: pd.DataFrame, mask: Any) -> pd.DataFrame:
    if mask is None:
        # A shallow copy shares the data (copy-on-write) but keeps a caller's new columns out of the cache.
        return frame.copy(deep=False)
    return frame[mask].reset_index(drop=True)


def _and(mask: Any, condition: Any) -> Any:
    return condition if mask is None else mask & condition


class TelemetryQueries:
    """The query methods shared by a live collector and a saved run; subclasses provide `_frame`."""

    def _frame(self, signal: str) -> pd.DataFrame:
        raise NotImplementedError

    def spans(self, service: str | Iterable[str] | None = None, trace_id: str | None = None,
              name: str | Iterable[str] | None = None, since: Any = None, until: Any = None,
              min_duration_ms: float | None = None, errors_only: bool = False) -> pd.DataFrame:
        """Return stored spans, oldest first, filtered by the given arguments.

        `since` and `until` bound `start_time` (inclusive). Both take a datetime, a Timestamp, an ISO
        8601 string (naive values are UTC) or a timedelta counted back from now.
        """
        frame = self._frame("spans")
        mask = None
        if service is not None:
            mask = _and(mask, frame["service_name"].isin(_names(service, "service")))
        if trace_id is not None:
            mask = _and(mask, frame["trace_id"] == _trace_id(trace_id))
        if name is not None:
            mask = _and(mask, frame["name"].isin(_names(name, "name")))
        if since is not None:
            mask = _and(mask, frame["start_time"] >= _utc(since, "since"))
        if until is not None:
            mask = _and(mask, frame["start_time"] <= _utc(until, "until"))
        if min_duration_ms is not None:
            mask = _and(mask, frame["duration_ms"] >= float(min_duration_ms))
        if errors_only:
            mask = _and(mask, frame["status_code"] == "ERROR")
        return _select(frame, mask)

    def traces(self, service: str | Iterable[str] | None = None, since: Any = None, until: Any = None,
               min_duration_ms: float | None = None, errors_only: bool = False) -> pd.DataFrame:
        """Return one row per trace, oldest first: its root span, time span, span and error counts, services.

        The root is the earliest stored span that has no parent or whose parent is not stored. A trace
        with no such span uses its earliest span. `service` keeps traces that
        touch any of the given services.
        """
        spans = self._frame("spans")
        if spans.empty:
            return pd.DataFrame({
                "trace_id": pd.array([], dtype="str"), "root_service": pd.array([], dtype="str"),
                "root_name": pd.array([], dtype="str"),
                "start_time": pd.Series([], dtype="datetime64[ns, UTC]"), "duration_ms": np.array([], float),
                "span_count": np.array([], np.int64), "error_count": np.array([], np.int64),
                "services": np.array([], dtype=object),
            })
        table = self._trace_table(spans)

        mask = None
        if service is not None:
            wanted = set(_names(service, "service"))
            mask = _and(mask, table["services"].map(lambda names: not wanted.isdisjoint(names)).astype(bool))
        if since is not None:
            mask = _and(mask, table["start_time"] >= _utc(since, "since"))
        if until is not None:
            mask = _and(mask, table["start_time"] <= _utc(until, "until"))
        if min_duration_ms is not None:
            mask = _and(mask, table["duration_ms"] >= float(min_duration_ms))
        if errors_only:
            mask = _and(mask, table["error_count"] > 0)
        return _select(table, mask)

    @staticmethod
    def _trace_table(spans: pd.DataFrame) -> pd.DataFrame:
        parent_key = pd.MultiIndex.from_arrays([spans["trace_id"], spans["parent_span_id"]])
        own_key = pd.MultiIndex.from_arrays([spans["trace_id"], spans["span_id"]])
        has_parent = spans["parent_span_id"].notna().to_numpy() & parent_key.isin(own_key)
        is_error = spans["status_code"] == "ERROR"

        work = pd.DataFrame({
            "trace_id": spans["trace_id"], "start_time": spans["start_time"], "end_time": spans["end_time"],
            "is_root": ~has_parent, "error": is_error.astype(np.int64),
            "service_name": spans["service_name"], "name": spans["name"],
        })
        grouped = work.groupby("trace_id", sort=False)
        table = grouped.agg(start_time=("start_time", "min"), end_time=("end_time", "max"),
                            span_count=("trace_id", "size"), error_count=("error", "sum"))

        ordered = work.sort_values(["is_root", "start_time"], ascending=[False, True], kind="stable")
        roots = ordered.drop_duplicates("trace_id").set_index("trace_id")
        pairs = work[["trace_id", "service_name"]].drop_duplicates().sort_values(["trace_id", "service_name"])
        services = pairs.groupby("trace_id", sort=False)["service_name"].agg(list)

        table["root_service"] = roots["service_name"]
        table["root_name"] = roots["name"]
        table["services"] = services
        table["duration_ms"] = (table["end_time"] - table["start_time"]).dt.total_seconds() * 1e3
        table = table.reset_index().sort_values("start_time", kind="stable").reset_index(drop=True)
        return table[["trace_id", "root_service", "root_name", "start_time", "duration_ms", "span_count",
                      "error_count", "services"]]

    def trace(self, trace_id: str) -> pd.DataFrame:
        """Return the spans of one trace in tree order, with `depth` and `self_time_ms`.

        Children follow their parent sorted by start time; spans whose parent is not stored are roots.
        Self time is the span's duration minus the union of its children's intervals within it.
        """
        wanted = _trace_id(trace_id)
        spans = self.spans(trace_id=wanted)
        if spans.empty:
            raise TraceNotFoundError(
                f"No stored span has trace id {wanted}. Check `traces()` for the stored trace ids; old spans "
                f"are evicted when the store is full."
            )

        starts = spans["start_time"].to_numpy(dtype="int64", na_value=0)
        ends = spans["end_time"].to_numpy(dtype="int64", na_value=0)
        span_ids = spans["span_id"].tolist()
        parents = spans["parent_span_id"].tolist()
        index_of = {span_id: i for i, span_id in enumerate(span_ids)}
        children: dict[int | None, list[int]] = {}
        for i, parent in enumerate(parents):
            key = index_of.get(parent) if isinstance(parent, str) else None
            if key == i:
                key = None
            children.setdefault(key, []).append(i)
        for members in children.values():
            members.sort(key=lambda i: starts[i])

        order: list[int] = []
        depths: list[int] = []
        seen: set[int] = set()
        stack = [(i, 0) for i in reversed(children.get(None, []))]
        # Spans caught in a parent cycle have no root; they are appended as roots afterwards.
        leftovers = sorted(set(range(len(spans))), key=lambda i: starts[i])
        while True:
            while stack:
                i, depth = stack.pop()
                if i in seen:
                    continue
                seen.add(i)
                order.append(i)
                depths.append(depth)
                stack.extend((child, depth + 1) for child in reversed(children.get(i, [])))
            remaining = [i for i in leftovers if i not in seen]
            if not remaining:
                break
            stack.append((remaining[0], 0))

        self_ms = [_self_time_ns(i, children.get(i, []), starts, ends) / 1e6 for i in order]
        result = spans.iloc[order].reset_index(drop=True)
        result["depth"] = np.array(depths, dtype=np.int64)
        result["self_time_ms"] = np.array(self_ms, dtype=np.float64)
        return result

    def logs(self, service: str | Iterable[str] | None = None, severity: str | int | None = None,
             trace_id: str | None = None, contains: str | None = None, since: Any = None) -> pd.DataFrame:
        """Return stored log records, oldest first.

        `severity` is a minimum: a name (TRACE, DEBUG, INFO, WARN, ERROR, FATAL) or an OTLP severity
        number. Records without a severity number are left out when it is given. `contains` matches a
        substring of the body (non-string bodies are matched on their `str()`), case-sensitively.
        """
        frame = self._frame("logs")
        mask = None
        if service is not None:
            mask = _and(mask, frame["service_name"].isin(_names(service, "service")))
        if severity is not None:
            minimum = _severity_number(severity)
            mask = _and(mask, (frame["severity_number"] >= minimum).fillna(False).astype(bool))
        if trace_id is not None:
            mask = _and(mask, frame["trace_id"] == _trace_id(trace_id))
        if contains is not None:
            needle = str(contains)
            matches = [needle in (body if isinstance(body, str) else str(body)) for body in frame["body"]]
            mask = _and(mask, np.array(matches, dtype=bool))
        if since is not None:
            mask = _and(mask, (frame["time"].fillna(frame["observed_time"]) >= _utc(since, "since")).fillna(False))
        return _select(frame, mask)

    def metrics(self, name: str | Iterable[str] | None = None,
                service: str | Iterable[str] | None = None) -> pd.DataFrame:
        """Return stored metric data points, oldest first; `value` is float, `value_int` keeps int64 exactly."""
        frame = self._frame("metrics")
        mask = None
        if name is not None:
            mask = _and(mask, frame["name"].isin(_names(name, "name")))
        if service is not None:
            mask = _and(mask, frame["service_name"].isin(_names(service, "service")))
        return _select(frame, mask)


def _severity_number(severity: str | int) -> int:
    if isinstance(severity, int):
        return severity
    number = SEVERITY_NUMBERS.get(str(severity).strip().upper())
    if number is None:
        raise ConfigurationError(
            f"Severity {severity!r} is unknown. Pass one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL or an OTLP "
            f"severity number (1-24)."
        )
    return number


def _self_time_ns(i: int, children: list[int], starts: np.ndarray, ends: np.ndarray) -> int:
    start, end = int(starts[i]), int(ends[i])
    covered = 0
    cursor = start
    for child in sorted(children, key=lambda c: starts[c]):
        child_start = max(int(starts[child]), cursor)
        child_end = min(int(ends[child]), end)
        if child_end > child_start:
            covered += child_end - child_start
            cursor = child_end
    return max(0, end - start - covered)


class TelemetryStore(TelemetryQueries):
    """Thread-safe, bounded storage of received spans, log records and metric points."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        limits = {**DEFAULT_LIMITS, **(limits or {})}
        self.tables = {signal: SignalTable(signal, limits[signal]) for signal in SIGNALS}
        self._dispatcher = _Dispatcher()

    def append(self, batch: Batch) -> None:
        """Store a decoded batch and hand it to `on_receive` subscribers."""
        self.tables[batch.signal].append(batch)
        if batch.size and self._dispatcher.wants(batch.signal):
            self._dispatcher.publish(batch)

    def _frame(self, signal: str) -> pd.DataFrame:
        return self.tables[signal].frame()

    def stats(self) -> pd.DataFrame:
        """Return received, accepted, rejected, evicted and stored counts, one row per signal."""
        rows = {}
        for signal, table in self.tables.items():
            with table._lock:
                rows[signal] = {**table.counts, "stored": len(table)}
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(STATS_COLUMNS)).astype(np.int64)
        frame.index.name = "signal"
        return frame

    def on_receive(self, callback: Callback, signals: str | Iterable[str] = SIGNALS) -> Callable[[], None]:
        """Call `callback(signal, frame)` on a background thread for every stored batch; return an unsubscribe.

        The frame has the columns of `spans()`, `logs()` or `metrics()` and holds only the new items.
        Exceptions in the callback are logged and never stop ingest.
        """
        wanted = frozenset(_names(signals, "signals"))
        unknown = wanted - set(SIGNALS)
        if unknown:
            raise ConfigurationError(
                f"Unknown signal(s) {sorted(unknown)} in `signals`. Use any of {list(SIGNALS)}."
            )
        if not callable(callback):
            raise ConfigurationError(f"`callback={callback!r}` is not callable.")
        return self._dispatcher.subscribe(callback, wanted)

    def clear(self) -> None:
        """Empty the store; counts in `stats()` other than `stored` keep their totals."""
        for table in self.tables.values():
            table.clear()

    def save(self, path: Any) -> Any:
        """Write every signal as Parquet plus a JSON manifest into directory `path`; return the path."""
        from homunculy_nb.run import save_run

        return save_run(path, {signal: self._frame(signal) for signal in SIGNALS}, self.stats())

    def close(self) -> None:
        """Stop the callback thread."""
        self._dispatcher.close()
