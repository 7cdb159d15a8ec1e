"""`homunculy-nb status` prints the state file as a readable table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_status_prints_integer_pids(make_stack):
    stack = make_stack("status")
    job = stack.add_executable("job", "true")
    stack.add_executable("server", "sleep", ["300"]).wait_for_completion(job)
    stack.up(timeout=60)
    frame = stack.status().set_index("name")
    server_pid = int(frame.loc["server", "pid"])

    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "homunculy_nb", "status", str(stack.state_dir)],
                          capture_output=True, text=True, env=environment, timeout=60)

    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split() for line in done.stdout.splitlines()[2:]}
    assert str(server_pid) in rows["server"]
    assert "0" in rows["job"]
    assert ".0" not in done.stdout
    assert "None" not in done.stdout
    assert "NaN" not in done.stdout
