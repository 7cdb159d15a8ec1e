"""Throttle: batches from many threads arrive complete, in order, and at most once per interval."""

from __future__ import annotations

import threading
import time

import pytest

from homunculy_nb.views._live import Throttle


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_throttle_delivers_every_item_in_order():
    received, starts = [], []

    def apply(items):
        starts.append(time.monotonic())
        received.extend(items)

    throttle = Throttle(apply, interval=0.2)
    for index in range(500):
        throttle.push(index)
    wait_for(lambda: len(received) == 500)

    assert received == list(range(500))
    throttle.close()


def test_throttle_spaces_batches_by_interval():
    starts = []
    throttle = Throttle(lambda items: starts.append(time.monotonic()), interval=0.2)

    def producer():
        for _ in range(40):
            throttle.push(1)
            time.sleep(0.01)

    threads = [threading.Thread(target=producer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wait_for(lambda: throttle._pending == [] and throttle._timer is None)

    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert len(starts) >= 2
    assert min(gaps) >= 0.2 - 0.005
    throttle.close()


def test_throttle_reports_apply_errors_and_keeps_going():
    errors, received = [], []

    def apply(items):
        if items == ["bad"]:
            raise RuntimeError("boom")
        received.extend(items)

    throttle = Throttle(apply, interval=0.05, on_error=errors.append)
    throttle.push("bad")
    throttle.flush()
    throttle.push("good")
    throttle.flush()

    assert [str(error) for error in errors] == ["boom"]
    assert received == ["good"]
    throttle.close()


def test_throttle_close_drops_pending():
    received = []
    throttle = Throttle(received.extend, interval=5)
    throttle.flush()
    throttle.push(1)
    throttle.close()
    throttle.push(2)
    throttle.flush()

    assert received == []


def test_throttle_rejects_nonpositive_interval():
    with pytest.raises(ValueError, match="interval must be positive"):
        Throttle(print, interval=0)
