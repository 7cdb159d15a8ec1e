"""The background event loop behind the synchronous methods."""

from __future__ import annotations

import asyncio

import pytest

from homunculy_nb import _loop


async def _raise_timeout() -> None:
    raise TimeoutError("the coroutine's own timeout")


async def _sleep_long() -> None:
    await asyncio.sleep(30)


def test_run_returns_coroutine_result():
    async def add() -> int:
        return 2 + 3

    assert _loop.run(add()) == 5


def test_run_keeps_coroutine_timeout_error():
    with pytest.raises(TimeoutError, match="the coroutine's own timeout"):
        _loop.run(_raise_timeout())


def test_run_timeout_names_limit():
    with pytest.raises(TimeoutError, match="within 0.05 s"):
        _loop.run(_sleep_long(), timeout=0.05)


def test_run_inside_running_loop_works():
    async def caller() -> int:
        async def value() -> int:
            return 7

        return _loop.run(value())

    assert asyncio.run(caller()) == 7
