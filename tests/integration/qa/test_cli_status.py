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


def test_down_volumes_after_plain_down(make_stack, tmp_path):
    stack = make_stack("volumes")
    stack.add_executable("server", "sleep", ["300"])
    stack.up(timeout=60)
    volume = stack.state_dir / "volumes" / "server-data"
    volume.mkdir(parents=True)
    (volume / "PG_VERSION").write_text("15\n")
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "homunculy_nb", "down", str(stack.state_dir)]

    plain = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)

    assert plain.returncode == 0, plain.stderr
    assert "Stopped server" in plain.stdout
    assert volume.exists()

    with_volumes = subprocess.run(command + ["--volumes"], capture_output=True, text=True, env=environment,
                                  timeout=120)

    assert with_volumes.returncode == 0, with_volumes.stderr
    assert "Removed data directories" in with_volumes.stdout
    assert not volume.exists()
