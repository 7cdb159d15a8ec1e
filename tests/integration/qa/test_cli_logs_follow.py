"""`homunculy-nb logs -f` keeps following a resource's log across a new launch of the stack."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
TICKER = "for i in 1 2 3; do echo {run}-tick-$i; sleep 0.1; done; sleep 300"


def test_follow_survives_new_launch(make_stack):
    first = make_stack("follow")
    first.add_executable("ticker", "sh", ["-c", TICKER.format(run="first-run-with-a-long-prefix")])
    first.up(timeout=60)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    follow = subprocess.Popen(
        [sys.executable, "-m", "homunculy_nb", "logs", "ticker", "-f", "--stack", str(first.state_dir)],
        stdout=subprocess.PIPE, text=True, env=environment,
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follow.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for_line(seen, "first-run-with-a-long-prefix-tick-3")
        first.down()

        # A new stack object on the same state directory rewrites the console log from its start.
        second = make_stack("follow", state_dir=first.state_dir)
        second.add_executable("ticker", "sh", ["-c", TICKER.format(run="second")])
        second.up(timeout=60)
        wait_for_line(seen, "second-tick-3")
    finally:
        follow.terminate()
        follow.wait(timeout=30)
        reader.join(timeout=30)
        follow.stdout.close()

    printed = [line.split(" ", 2)[2].strip() for line in seen if line.count(" ") >= 2]
    assert "second-tick-1" in printed
    assert "second-tick-2" in printed
    assert "second-tick-3" in printed


def wait_for_line(seen: list[str], text: str, timeout: float = 60.0) -> None:
    """Wait until a printed line contains `text`; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not any(text in line for line in seen):
        if time.monotonic() > deadline:
            pytest.fail(f"`logs -f` printed no line with {text!r} within {timeout} s; it printed {seen!r}")
        time.sleep(0.05)
