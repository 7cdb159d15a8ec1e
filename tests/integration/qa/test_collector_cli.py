"""`homunculy-nb collector --save-to`: a bad directory fails at start, and a failed save at exit loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from homunculy_nb import open_run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
SPAN_BODY = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
    "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "kept",
    "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]})


def test_unwritable_save_to_fails_at_start(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "run"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    done = subprocess.run(
        [sys.executable, "-m", "homunculy_nb", "collector", "--grpc-port", "0", "--http-port", "0",
         "--save-to", str(target)],
        capture_output=True, text=True, env=environment, timeout=60,
    )

    assert done.returncode == 1
    assert f"Cannot save telemetry to '{target}'" in done.stderr
    assert "--save-to" in done.stderr
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stdout


def test_failed_save_falls_back_to_temporary_directory(tmp_path):
    target = tmp_path / "run"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "homunculy_nb", "collector", "--grpc-port", "0", "--http-port", "0",
         "--save-to", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    try:
        first_line = process.stdout.readline()
        http_url = first_line.rsplit("HTTP ", 1)[1].rstrip(".\n")
        response = httpx.post(http_url + "/v1/traces", content=SPAN_BODY, headers={"Content-Type": "application/json"},
                              timeout=30)
        # Replace the directory with a file, so the save at exit fails.
        target.rmdir()
        target.write_text("now a file")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

    fallback = Path(stderr.rsplit("Saving to ", 1)[1].split(" instead", 1)[0])
    try:
        saved = open_run(fallback)
        names = saved.spans().name.tolist()
    finally:
        shutil.rmtree(fallback, ignore_errors=True)

    assert response.status_code == 200
    assert process.returncode == 0, stderr
    assert f"Could not save to {target}" in stderr
    assert names == ["kept"]
    assert f"Saved 1 spans, 0 log records and 0 metric points to {fallback}" in stdout


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_port_in_use_names_cli_option(transport):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    ports = {"grpc": "0", "http": "0", transport: str(port)}
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "homunculy_nb", "collector", "--grpc-port", ports["grpc"], "--http-port",
             ports["http"]],
            capture_output=True, text=True, env=environment, timeout=60,
        )
    finally:
        holder.close()

    assert done.returncode == 1
    assert f"127.0.0.1:{port}" in done.stderr
    assert f"`--{transport}-port 0` on the command line" in done.stderr
    assert ".." not in done.stderr.splitlines()[-1]
