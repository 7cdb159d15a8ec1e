"""Throttled delivery of background-thread callbacks to widgets.

Collector and orchestrator callbacks arrive on background threads, often many per second. A
`Throttle` queues what they bring and hands it to one `apply` function in batches, at most once per
`interval` seconds (unless `flush()` forces one), on a timer thread. `apply` only sets widget state: ipywidgets sends state changes
to every view of a widget from any thread, while printing from a thread would land in whatever cell
runs at that moment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.5


class Throttle:
    """Collect items pushed from any thread and apply them in batches, at most once per `interval` seconds.

    Timer batches start at least `interval` seconds apart; only `flush()` applies earlier.
    `apply(items)` gets the items in push order. An exception in `apply` is logged at DEBUG and passed
    to `on_error`, so a widget can show it; the throttle keeps running.
    """

    def __init__(self, apply: Callable[[list[Any]], None], interval: float = DEFAULT_INTERVAL,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive seconds, but got {interval!r}.")
        self._apply = apply
        self._interval = interval
        self._on_error = on_error
        self._lock = threading.Lock()
        self._apply_lock = threading.Lock()
        self._pending: list[Any] = []
        self._timer: threading.Timer | None = None
        self._last_applied = float("-inf")
        self._closed = False
        self._applying: threading.Thread | None = None
        self.batches = 0

    def push(self, item: Any = None) -> None:
        """Queue `item` and schedule a batch unless one is already scheduled."""
        with self._lock:
            if self._closed:
                return
            self._pending.append(item)
            if self._timer is not None:
                return
            delay = max(0.0, self._last_applied + self._interval - time.monotonic())
            self._timer = threading.Timer(delay, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        """Apply what is queued now, on the calling thread; waits for a batch in progress."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._last_applied = time.monotonic()
        self._run_batch()

    def close(self) -> None:
        """Drop queued items, stop scheduling batches and wait for a batch in progress to end."""
        with self._lock:
            self._closed = True
            self._pending.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        # A batch may be running on a timer thread; once it ends, no widget changes anymore.
        if self._applying is not threading.current_thread():
            with self._apply_lock:
                pass

    def _fire(self) -> None:
        # The slot starts now, so a push during this batch schedules the next one an interval later.
        with self._lock:
            self._timer = None
            self._last_applied = time.monotonic()
        self._run_batch()

    def _run_batch(self) -> None:
        with self._apply_lock:
            with self._lock:
                items, self._pending = self._pending, []
            if not items or self._closed:
                return

            self.batches += 1
            self._applying = threading.current_thread()
            try:
                self._apply(items)
            except Exception as exc:  # noqa: BLE001 - a widget update must not end the timer thread
                logger.debug("Live view update failed", exc_info=True)
                if self._on_error is not None:
                    self._on_error(exc)
            finally:
                self._applying = None

    def __repr__(self) -> str:
        return f"<Throttle interval={self._interval}s pending={len(self._pending)} batches={self.batches}>"
