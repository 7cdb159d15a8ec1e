"""`homunculy-nb up` keeps reporting state changes after the stack is up, so a crash is not missed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_up_reports_later_crash(tmp_path):
    state_dir = tmp_path / "state"
    stack_file = tmp_path / "crash_stack.py"
    stack_file.write_text(textwrap.dedent(f"""
        from homunculy_nb.stack import Stack

        stack = Stack("cli-crash", state_dir={str(state_dir)!r})
        server = stack.add_executable("server", "sleep", ["300"])
        stack.add_executable("crasher", "sh", ["-c", "sleep 1; exit 4"]).wait_for(server)
    """))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    up = subprocess.Popen([sys.executable, "-m", "homunculy_nb", "up", str(stack_file), "--no-logs"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    try:
        deadline = time.monotonic() + 60
        while not (state_dir / "state.json").exists() or "Healthy" not in (state_dir / "state.json").read_text():
            assert up.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(3.0)  # the crasher exits 1 s after up() returned
        up.send_signal(signal.SIGTERM)
        stdout, stderr = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()

    assert up.returncode == 0, stderr
    assert "crasher" in stdout
    assert "crasher" in stderr
    assert "exited with code 4" in stderr
    assert "server" in stderr.split("Stopping the stack...", 1)[1]
    assert "Stopped" in stderr.split("Stopping the stack...", 1)[1]
