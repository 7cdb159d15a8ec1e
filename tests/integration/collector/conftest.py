"""Fixtures for the collector's integration tests: a live collector on free ports and an SDK sender."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homunculy_nb.collector import Collector

SENDER = Path(__file__).with_name("sdk_sender.py")


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector(grpc_port=0, http_port=0) as running:
        yield running


@pytest.fixture
def sdk_sender() -> Callable[..., dict[str, str]]:
    """Return a function that runs the SDK sender child process and returns the ids it printed."""
    return run_sdk_sender


@pytest.fixture
def wait_until() -> Callable[..., None]:
    """Return a function that polls a condition until it is true or fails the test."""
    return wait_for


def run_sdk_sender(protocol: str, endpoint: str, api_key: str | None = None) -> dict[str, str]:
    """Run the SDK sender in a child process and return the ids it printed."""
    command = [sys.executable, str(SENDER), protocol, endpoint] + ([api_key] if api_key else [])
    environment = {**os.environ, "OTEL_SDK_DISABLED": "false", "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"Condition not met within {timeout} s")
        time.sleep(0.05)
