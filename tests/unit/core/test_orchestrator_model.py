"""Orchestrator pieces that need no process: validation, frames, masking, the state file, the CLI parser."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path

import pytest

from homunculy_nb.cli import build_parser, resolve_state_dir
from homunculy_nb.errors import ConfigurationError
from homunculy_nb.orchestrator import (
    LOG_COLUMNS,
    STATUS_COLUMNS,
    ResourceState,
    log_frame,
    port_available,
)
from homunculy_nb.runtimes.base import Launch, find_runtime
from homunculy_nb.runtimes.process import ProcessRuntime
from homunculy_nb.state import StateDir, launcher_alive, launcher_record


def test_state_values_follow_vocabulary():
    assert [state.value for state in ResourceState] == [
        "NotStarted", "Waiting", "Starting", "Running", "Healthy", "Unhealthy", "Finished", "Exited",
        "FailedToStart", "Stopping", "Stopped",
    ]


def test_status_before_up(stack):
    stack.add_executable("job", "true")

    status = stack.status()

    assert list(status.columns) == STATUS_COLUMNS
    assert status.state.tolist() == ["NotStarted"]
    assert str(status.pid.dtype) == "Int64"
    assert str(status.started_at.dtype) == "datetime64[ns, UTC]"


def test_events_and_logs_empty_before_up(stack):
    stack.add_executable("job", "true")

    assert stack.events().empty
    assert list(stack.logs().columns) == LOG_COLUMNS


def test_logs_unknown_resource_rejected(stack):
    with pytest.raises(ConfigurationError, match="no resource `ghost`"):
        stack.logs("ghost")


def test_wait_cycle_rejected_before_start(stack):
    a = stack.add_executable("a", "true")
    b = stack.add_executable("b", "true").wait_for(a)
    a.wait_for(b)

    with pytest.raises(ConfigurationError, match="cycle: `a` -> `b` -> `a`"):
        stack.up(progress=False)

    assert stack.events().empty


def test_log_frame_adds_json_fields():
    stamp = datetime(2026, 1, 1, tzinfo=timezone.utc)
    frame = log_frame([
        (stamp, "app", "stdout", '{"event": "ready", "line": "kept apart"}'),
        (stamp, "app", "stderr", "plain text"),
    ])

    assert frame.event.tolist()[0] == "ready"
    assert frame.line.tolist() == ['{"event": "ready", "line": "kept apart"}', "plain text"]


def test_mask_replaces_secret_and_quoted_form(stack):
    orchestrator = stack.orchestrator
    orchestrator._remember_secret("p@ss word")

    assert orchestrator.mask("uri postgresql://u:p%40ss%20word@h/db") == "uri postgresql://u:********@h/db"
    assert orchestrator.mask("plain p@ss word") == "plain ********"


def test_launch_repr_hides_environment(tmp_path):
    launch = Launch("app", tmp_path, env={"DB_PASSWORD": "hunter2"}, command=["app", "--password", "hunter2"])

    assert "hunter2" not in repr(launch)
    assert "DB_PASSWORD" in repr(launch)


def test_port_available_detects_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        assert port_available(port) is False


def test_find_runtime_builtin_and_missing():
    assert find_runtime("process") is ProcessRuntime
    assert find_runtime("no-such-runtime") is None


def test_process_runtime_rejects_missing_program(tmp_path):
    launch = Launch("ghost", tmp_path, command=["definitely-not-a-program-xyz"])

    with pytest.raises(Exception, match="definitely-not-a-program-xyz"):
        ProcessRuntime().check_available(launch)


def test_state_file_round_trip(tmp_path):
    state_dir = StateDir(tmp_path / "state")
    state_dir.write({"launcher": launcher_record(), "resources": {}})

    assert state_dir.read()["launcher"]["pid"] == os.getpid()
    assert launcher_alive(state_dir.read()) is None  # the current process is not "another launcher"
    state_dir.clear()
    assert state_dir.read() == {}


def test_unreadable_state_file_ignored(tmp_path):
    state_dir = StateDir(tmp_path)
    state_dir.state_file.write_text("{broken")

    assert state_dir.read() == {}


def test_cli_parser_commands():
    parser = build_parser()

    assert parser.parse_args(["up", "stack.py"]).stackfile == "stack.py"
    assert parser.parse_args(["logs", "app", "-f"]).follow is True
    assert parser.parse_args(["secrets", "set", "s", "n", "v"]).value == "v"
    collector = parser.parse_args(["collector", "--grpc-port", "0", "--http-port", "0", "--save-to", "runs/x"])
    assert (collector.grpc_port, collector.http_port, collector.save_to) == (0, 0, "runs/x")
    publish = parser.parse_args(["publish", "stack.py", "--target", "compose", "--out", "out"])
    assert publish.target == "compose"


def test_cli_state_dir_from_name_and_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    assert resolve_state_dir("demo") == tmp_path / "homunculy-nb" / "demo"
    assert resolve_state_dir(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(ConfigurationError, match="none launched before"):
        resolve_state_dir(None)


def test_cli_state_dir_from_stack_file(tmp_path):
    stack_file = tmp_path / "my_stack.py"
    stack_file.write_text(f"from homunculy_nb.stack import Stack\nstack = Stack('f', state_dir={str(tmp_path / 's')!r})\n")

    assert resolve_state_dir(str(stack_file)) == Path(tmp_path / "s").resolve()


def test_missing_changelog_fails_before_start(stack):
    database = stack.add_postgres("db").add_database("app")
    stack.add_migrations("migrate", "missing/changelog.xml", database)

    with pytest.raises(ConfigurationError, match="changelog .*missing/changelog.xml.* of `migrate` does not exist"):
        stack.up(progress=False)

    assert stack.events().empty


def test_missing_script_fails_before_start(stack):
    stack.add_python_app("worker", "worker.py")

    with pytest.raises(ConfigurationError, match="script .* of `worker` does not exist"):
        stack.up(progress=False)
