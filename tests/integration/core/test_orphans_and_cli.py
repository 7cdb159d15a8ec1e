"""Cleanup after a crashed launcher, and the `homunculy-nb` command on real stacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from homunculy_nb.stack import Stack

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if pid_alive(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_stack_file(directory: Path, state_dir: Path, with_postgres: bool) -> Path:
    pid_file = directory / "grandchild.pid"
    postgres = 'stack.add_postgres("db").add_database("app")' if with_postgres else ""
    source = f"""
        from homunculy_nb.stack import Stack

        stack = Stack("orphans", state_dir={str(state_dir)!r})
        stack.add_executable("tree", "sh", ["-c", "sleep 300 & echo $! > {pid_file}; wait"])
        {postgres}
    """
    path = directory / "orphan_stack.py"
    path.write_text(textwrap.dedent(source))
    return path


def launch_and_kill(stack_file: Path, tmp_path: Path) -> dict[str, int]:
    """Run the stack in a child Python process, SIGKILL that process, and return the pids it left."""
    launcher = textwrap.dedent(f"""
        import json, sys, time
        from homunculy_nb.cli import load_stack_file
        stack = load_stack_file({str(stack_file)!r})
        stack.up(timeout=120, progress=False)
        pids = {{name: int(pid) for name, pid in zip(stack.status().name, stack.status().pid) if pid is not None and str(pid) != "<NA>"}}
        print(json.dumps(pids), flush=True)
        time.sleep(600)
    """)
    process = subprocess.Popen([sys.executable, "-c", launcher], stdout=subprocess.PIPE, text=True,
                               env=child_env(), cwd=tmp_path)
    try:
        line = process.stdout.readline()
        assert line, "the launcher exited before the stack was up"
        pids = json.loads(line)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()

    pid_file = stack_file.parent / "grandchild.pid"
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids["grandchild"] = int(pid_file.read_text())
    return pids


def test_orphans_stopped_by_next_up(tmp_path, state_root):
    state_dir = state_root / "state"
    stack_file = write_stack_file(tmp_path, state_dir, with_postgres=True)
    pids = launch_and_kill(stack_file, tmp_path)
    assert pid_alive(pids["tree"])
    assert pid_alive(pids["grandchild"])

    stack = Stack("orphans", state_dir=state_dir)
    stack.add_executable("other", "true")
    try:
        stack.up(timeout=60, progress=False)
        leftover = wait_gone(list(pids.values()))
    finally:
        stack.down()

    assert leftover == []


def test_cli_down_stops_orphans(tmp_path, state_root):
    state_dir = state_root / "state"
    stack_file = write_stack_file(tmp_path, state_dir, with_postgres=False)
    pids = launch_and_kill(stack_file, tmp_path)
    assert pid_alive(pids["grandchild"])

    status = subprocess.run([sys.executable, "-m", "homunculy_nb", "status", str(state_dir)],
                            capture_output=True, text=True, env=child_env(), timeout=60)
    result = subprocess.run([sys.executable, "-m", "homunculy_nb", "down", str(stack_file)],
                            capture_output=True, text=True, env=child_env(), timeout=120)

    assert "launcher gone" in status.stdout
    assert result.returncode == 0, result.stderr
    assert "Stopped tree" in result.stdout
    assert wait_gone(list(pids.values())) == []
    assert not (state_dir / "state.json").exists()


def test_cli_up_status_logs_down(tmp_path, state_root):
    state_dir = state_root / "state"
    stack_file = tmp_path / "web_stack.py"
    stack_file.write_text(textwrap.dedent(f"""
        from homunculy_nb.stack import Stack

        stack = Stack("cli-web", state_dir={str(state_dir)!r})
        web = stack.add_python_app("web", "http.server").with_http_endpoint()
        web.with_args(web.endpoint("http").port, "--bind", "127.0.0.1").with_http_health_check("/")
    """))
    up = subprocess.Popen([sys.executable, "-m", "homunculy_nb", "up", str(stack_file)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.monotonic() + 120
        state = {}
        while state.get("resources", {}).get("web", {}).get("state") != "Healthy":
            assert up.poll() is None, up.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
            if (state_dir / "state.json").exists():
                state = json.loads((state_dir / "state.json").read_text())
        web_pid = state["resources"]["web"]["pid"]

        status = subprocess.run([sys.executable, "-m", "homunculy_nb", "status", str(stack_file)],
                                capture_output=True, text=True, env=child_env(), timeout=60)
        logs = subprocess.run([sys.executable, "-m", "homunculy_nb", "logs", "web", "--stack", str(state_dir)],
                              capture_output=True, text=True, env=child_env(), timeout=60)
        down = subprocess.run([sys.executable, "-m", "homunculy_nb", "down", str(state_dir)],
                              capture_output=True, text=True, env=child_env(), timeout=120)
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up.stdout.close()
        up.stderr.close()

    assert "Healthy" in status.stdout
    assert "http://127.0.0.1:" in status.stdout
    assert "GET / HTTP" in logs.stdout
    assert down.returncode == 0, down.stderr
    assert up.returncode == 0
    assert wait_gone([web_pid]) == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homunculy_nb", *args], capture_output=True, text=True,
                          env=child_env(), timeout=60)


def test_cli_secrets_set_list_remove():
    set_result = run_cli("secrets", "set", "demo", "db-password", "hunter22")
    listed = run_cli("secrets", "list", "demo")
    removed = run_cli("secrets", "remove", "demo", "db-password")
    missing = run_cli("secrets", "remove", "demo", "db-password")

    assert set_result.returncode == 0, set_result.stderr
    assert "hunter22" not in set_result.stdout
    assert listed.stdout.split() == ["demo", "db-password"]
    assert removed.returncode == 0
    assert missing.returncode == 1
    secrets = json.loads(Path(os.environ["HOMUNCULY_NB_SECRETS_FILE"]).read_text())
    assert secrets == {}


def test_cli_secret_used_by_stack(tmp_path, make_stack):
    run_cli("secrets", "set", "itest", "token", "tok-from-cli")
    stack = make_stack()
    token = stack.add_parameter("token", secret=True)

    assert token.value.reveal() == "tok-from-cli"
    assert token.source == "secrets file"


def test_cli_bad_stack_file_message(tmp_path):
    bad = tmp_path / "empty_stack.py"
    bad.write_text("x = 1\n")

    result = run_cli("up", str(bad))

    assert result.returncode == 1
    assert "must define `stack = Stack(...)`" in result.stderr


def test_atexit_stops_stack_on_normal_exit(tmp_path, state_root):
    state_dir = state_root / "state"
    stack_file = write_stack_file(tmp_path, state_dir, with_postgres=False)
    script = textwrap.dedent(f"""
        from homunculy_nb.cli import load_stack_file
        stack = load_stack_file({str(stack_file)!r})
        stack.up(timeout=60, progress=False)
        import pathlib, time
        pid_file = pathlib.Path({str(tmp_path / "grandchild.pid")!r})
        while not (pid_file.exists() and pid_file.read_text().strip()):
            time.sleep(0.05)
        print(int(stack.status().pid.iloc[0]), flush=True)
    """)

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(),
                            cwd=tmp_path, timeout=120)

    assert result.returncode == 0, result.stderr
    pid = int(result.stdout.split()[0])
    grandchild = int((tmp_path / "grandchild.pid").read_text())
    assert wait_gone([pid, grandchild], timeout=5) == []
    assert not (state_dir / "state.json").exists()


def test_cli_up_failure_exits_nonzero_and_cleans_up(tmp_path, state_root):
    state_dir = state_root / "state"
    stack_file = tmp_path / "failing_stack.py"
    stack_file.write_text(textwrap.dedent(f"""
        from homunculy_nb.stack import Stack

        stack = Stack("cli-fail", state_dir={str(state_dir)!r})
        job = stack.add_executable("job", "sh", ["-c", "echo cannot connect >&2; exit 4"])
        stack.add_executable("app", "sleep", ["300"]).wait_for_completion(job)
    """))

    result = subprocess.run([sys.executable, "-m", "homunculy_nb", "up", str(stack_file)], capture_output=True,
                            text=True, env=child_env(), timeout=120)

    assert result.returncode == 1
    assert "Resource `job` exited" in result.stderr
    assert "cannot connect" in result.stderr
    assert not (state_dir / "state.json").exists()


def test_cli_logs_follow_prints_new_lines(tmp_path, make_stack):
    stack = make_stack("follow")
    stack.add_executable("ticker", "sh", ["-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo tick-$i; sleep 0.2; done; sleep 60"])
    stack.up(timeout=60)
    follow = subprocess.Popen([sys.executable, "-m", "homunculy_nb", "logs", "ticker", "-f", "--stack", str(stack.state_dir)],
                              stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        seen = []
        deadline = time.monotonic() + 60
        while "tick-10" not in "".join(seen):
            assert time.monotonic() < deadline
            seen.append(follow.stdout.readline())
    finally:
        follow.terminate()
        follow.wait()
        follow.stdout.close()

    assert any("tick-1" in line and "stdout" in line for line in seen)
