"""The package's background event loop.

Public methods are synchronous so they work in a plain script and in a notebook whose kernel already
runs an event loop. They submit a coroutine to one asyncio loop that runs in a daemon thread and wait
for its result. Callers that want concurrency use the `_async` twins on their own loop instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """Return the background loop, starting its thread on first use."""
    global _loop, _thread

    with _lock:
        if _loop is not None and _thread is not None and _thread.is_alive():
            return _loop

        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run_forever() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        thread = threading.Thread(target=run_forever, name="homunculy-nb-loop", daemon=True)
        thread.start()
        ready.wait()
        _loop, _thread = loop, thread
        logger.debug("Background event loop started in thread %s", thread.name)
        return loop


def in_loop_thread() -> bool:
    """Tell whether the caller runs on the background loop's thread."""
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule `coro` on the background loop and return a thread-safe future."""
    return asyncio.run_coroutine_threadsafe(coro, get_loop())


def run(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the background loop and block the calling thread until it returns.

    Raises `RuntimeError` when called from the loop's own thread, where blocking would deadlock;
    code running there awaits the coroutine instead.
    """
    if in_loop_thread():
        coro.close()
        raise RuntimeError(
            "A synchronous homunculy-nb method was called on the package's event loop thread. "
            "Await its `_async` twin instead."
        )

    future = submit(coro)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        # Since Python 3.11 this is the built-in TimeoutError, so it may come from the coroutine itself.
        if future.done():
            raise
        future.cancel()
        raise TimeoutError(f"The operation did not finish within {timeout} s.") from None
    except KeyboardInterrupt:
        # Interrupting a notebook cell cancels the work instead of leaving it running unseen.
        future.cancel()
        raise
