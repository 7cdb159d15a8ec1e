"""The orchestrator on real processes: ordering, waits, failures, environment, masking, ports."""

from __future__ import annotations

import json
import socket
import sys
import time

import pandas as pd
import psutil
import pytest

from homunculy_nb.errors import ParameterError, RuntimeUnavailableError, StartupError, StateError

pytestmark = pytest.mark.integration

# Waits for a file another resource creates; exits 1 after 60 s so a sequential start fails the test.
WAIT_FOR_FILE = """
import pathlib, sys, time
pathlib.Path(sys.argv[1]).write_text("started")
deadline = time.monotonic() + 60
while not pathlib.Path(sys.argv[2]).exists():
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.02)
print("saw", sys.argv[2])
"""


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def until_state(stack, name: str, *states: str, timeout: float = 60.0) -> None:
    """Poll the status frame until `name` reaches one of `states`."""
    deadline = time.monotonic() + timeout
    while stack.status().set_index("name").loc[name, "state"] not in states:
        assert time.monotonic() < deadline, f"`{name}` never reached {states}"
        time.sleep(0.05)


def http_server(stack, name: str, port: int | None = None):
    """Declare `python -m http.server` on an allocated (or fixed) port with an HTTP health check."""
    app = stack.add_python_app(name, "http.server").with_http_endpoint(port=port)
    app.with_args(app.endpoint("http").port, "--bind", "127.0.0.1").with_http_health_check("/")
    return app


def test_independent_resources_start_in_parallel(make_stack, tmp_path):
    stack = make_stack()
    a_started, b_started = tmp_path / "a", tmp_path / "b"
    a = stack.add_executable("a", sys.executable, ["-c", WAIT_FOR_FILE, str(a_started), str(b_started)])
    b = stack.add_executable("b", sys.executable, ["-c", WAIT_FOR_FILE, str(b_started), str(a_started)])
    stack.add_executable("after", "true").wait_for_completion(a).wait_for_completion(b)

    stack.up(timeout=90)
    until_state(stack, "after", "Finished")

    status = stack.status().set_index("name")
    assert status.loc["a", "state"] == "Finished"
    assert status.loc["b", "state"] == "Finished"
    assert status.loc["after", "state"] == "Finished"


def test_dependent_starts_after_completion(make_stack):
    stack = make_stack()
    job = stack.add_executable("job", "sh", ["-c", "sleep 0.2; echo migrated"])
    stack.add_executable("app", "true").wait_for_completion(job)

    stack.up(timeout=60)

    events = stack.events()
    job_finished = events[(events.resource == "job") & (events.state == "Finished")].time.iloc[0]
    app_starting = events[(events.resource == "app") & (events.state == "Starting")].time.iloc[0]
    assert app_starting >= job_finished
    assert events[(events.resource == "app")].state.iloc[0] == "Waiting"


def test_wait_for_completion_with_expected_exit_code(make_stack):
    stack = make_stack()
    job = stack.add_executable("job", "sh", ["-c", "exit 3"])
    stack.add_executable("app", "true").wait_for_completion(job, exit_code=3)

    stack.up(timeout=60)
    until_state(stack, "app", "Finished")

    status = stack.status().set_index("name")
    assert status.loc["job", "state"] == "Exited"
    assert status.loc["job", "exit_code"] == 3
    assert status.loc["app", "state"] == "Finished"


def test_failure_propagates_with_readable_error(make_stack):
    stack = make_stack()
    job = stack.add_executable("job", "sh", ["-c", "echo 'relation users does not exist' >&2; exit 2"])
    app = stack.add_executable("app", "sleep", ["30"]).wait_for_completion(job)
    stack.add_executable("web", "sleep", ["30"]).wait_for(app)

    with pytest.raises(StartupError) as raised:
        stack.up(timeout=60)

    message = str(raised.value)
    assert raised.value.resource == "job"
    assert "`job` exited" in message
    assert "relation users does not exist" in message
    status = stack.status().set_index("name")
    assert status.loc["app", "state"] == "NotStarted"
    assert "`job` exited with code 2" in status.loc["app", "last_error"]
    assert status.loc["web", "state"] == "NotStarted"
    assert "`app` was not started" in status.loc["web", "last_error"]


def test_wait_for_unhealthy_exit_fails_dependents(make_stack):
    stack = make_stack()
    server = stack.add_executable("server", "sh", ["-c", "echo crashing; exit 1"]).with_health_check(lambda: False)
    stack.add_executable("client", "sleep", ["30"]).wait_for(server)

    with pytest.raises(StartupError, match="`server`"):
        stack.up(timeout=60)

    assert stack.status().set_index("name").loc["client", "state"] == "NotStarted"


def test_environment_seen_by_child(make_stack, tmp_path):
    stack = make_stack()
    token = stack.add_parameter("api-token", secret=True, value="tok-123456")
    region = stack.add_parameter("region", default="eu-west")
    backend = http_server(stack, "backend")
    output = tmp_path / "env.json"
    dump = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"
    (
        stack.add_executable("client", sys.executable, ["-c", dump, str(output)])
        .with_environment("TOKEN", token)
        .with_environment("REGION", region)
        .with_environment("BACKEND_PORT", backend.endpoint("http").port)
        .with_environment("BACKEND_URL", backend.endpoint("http").url)
        .with_reference(backend)
        .wait_for(backend)
    )

    stack.up(timeout=60)
    until_state(stack, "client", "Finished")

    env = json.loads(output.read_text())
    url = backend.url()
    assert env["TOKEN"] == "tok-123456"
    assert env["REGION"] == "eu-west"
    assert env["BACKEND_PORT"] == url.rsplit(":", 1)[1]
    assert env["BACKEND_URL"] == url
    assert env["services__backend__http__0"] == url
    assert env["BACKEND_HTTP"] == url


def test_secret_masked_in_logs_status_errors_and_state(make_stack):
    secret_value = "s3cr3t-value-42"
    stack = make_stack()
    password = stack.add_parameter("password", secret=True, value=secret_value)
    leaky = (
        stack.add_executable("leaky", "sh", ["-c", 'echo "password is $PASSWORD"; echo "{\\"pw\\": \\"$PASSWORD\\"}"; exit 1'])
        .with_environment("PASSWORD", password)
    )
    stack.add_executable("after", "true").wait_for_completion(leaky)

    with pytest.raises(StartupError) as raised:
        stack.up(timeout=60)

    logs = stack.logs("leaky")
    assert secret_value not in str(raised.value)
    assert "password is ********" in list(logs.line)
    assert secret_value not in logs.to_string()
    assert secret_value not in stack.status().to_string()
    assert secret_value not in stack.events().to_string()
    assert secret_value not in stack.state_dir.joinpath("logs", "leaky.log").read_text()
    assert secret_value not in stack.state_dir.joinpath("state.json").read_text()
    assert secret_value not in repr(stack.resources["leaky"].environment)
    assert secret_value not in repr(password.value)


def test_logs_frame_parses_json_lines(make_stack):
    stack = make_stack()
    stack.add_executable("json", "sh", ["-c", 'echo \'{"level": "info", "event": "ready", "n": 3}\'; echo plain'])

    stack.up(timeout=60)
    until_state(stack, "json", "Finished")

    logs = stack.logs("json")
    assert list(logs.line) == ['{"level": "info", "event": "ready", "n": 3}', "plain"]
    assert logs.event.iloc[0] == "ready"
    assert logs.level.iloc[0] == "info"
    assert str(logs.time.dtype) == "datetime64[ns, UTC]"
    assert len(stack.logs("json", tail=1)) == 1


def test_subscriptions_receive_events_and_lines(make_stack):
    stack = make_stack()
    events, lines = [], []
    stack.on_event(events.append)
    unsubscribe = stack.on_log(lambda stamp, resource, stream, line: lines.append((resource, stream, line)))
    stack.add_executable("hello", "sh", ["-c", "echo hello; echo oops >&2"])

    stack.up(timeout=60)
    until_state(stack, "hello", "Finished")

    assert ("hello", "stdout", "hello") in lines
    assert ("hello", "stderr", "oops") in lines
    states = [event.state.value for event in events if event.resource == "hello"]
    assert states[:2] == ["Starting", "Running"]
    assert states[-1] == "Finished"
    assert events[-1].previous is not None
    unsubscribe()


def test_missing_parameter_fails_before_anything_starts(make_stack):
    stack = make_stack()
    key = stack.add_parameter("openai-api-key", secret=True)
    stack.add_executable("first", "sleep", ["30"])
    stack.add_executable("needs-key", "true").with_environment("KEY", key)

    with pytest.raises(ParameterError, match="homunculy-nb secrets set itest openai-api-key"):
        stack.up(timeout=60)

    assert set(stack.status().state) == {"NotStarted"}
    assert stack.events().empty


def test_container_without_docker_runtime_fails_before_start(make_stack, monkeypatch):
    from homunculy_nb.runtimes import base

    monkeypatch.setitem(base._builtin, "docker", ("homunculy_nb.runtimes.no_such_docker", "DockerRuntime"))
    monkeypatch.delitem(base._registry, "docker", raising=False)
    stack = make_stack()
    stack.add_executable("first", "sleep", ["30"])
    stack.add_container("web", "busybox").with_http_endpoint(target_port=80)

    with pytest.raises(RuntimeUnavailableError, match="`web`"):
        stack.up(timeout=60)

    assert set(stack.status().state) == {"NotStarted"}


def test_missing_program_named(make_stack):
    stack = make_stack()
    stack.add_executable("ghost", "no-such-program-xyz")

    with pytest.raises(RuntimeUnavailableError, match="no-such-program-xyz"):
        stack.up(timeout=60)


def test_fixed_port_conflict_names_port_and_pid(make_stack):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stack = make_stack()
    http_server(stack, "web", port=port)

    try:
        with pytest.raises(StartupError) as raised:
            stack.up(timeout=60)
    finally:
        listener.close()

    message = str(raised.value)
    assert f"Port {port} for `web` is in use by pid {psutil.Process().pid}" in message
    assert "port=None" in message
    assert stack.status().set_index("name").loc["web", "state"] == "FailedToStart"


def test_grandchildren_stopped_with_group(make_stack, tmp_path):
    stack = make_stack()
    pid_file = tmp_path / "grandchild.pid"
    stack.add_executable("parent", "sh", ["-c", f"sleep 300 & echo $! > {pid_file}; wait"])

    stack.up(timeout=60)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert pid_alive(grandchild)

    stack.down()

    assert not pid_alive(grandchild)


def test_sigterm_ignored_then_killed(make_stack):
    stack = make_stack()
    stack.add_executable("stubborn", "sh", ["-c", "trap '' TERM; while true; do sleep 0.1; done"])
    stack.up(timeout=60)
    pid = int(stack.status().pid.iloc[0])

    stack.down(timeout=0.5)

    assert not pid_alive(pid)
    assert stack.status().state.iloc[0] == "Stopped"


def test_explicit_start(make_stack):
    stack = make_stack()
    tool = http_server(stack, "tool").with_explicit_start()
    stack.add_executable("uses-tool", "true").wait_for(tool)
    stack.add_executable("other", "true")

    stack.up(timeout=60)
    until_state(stack, "other", "Finished")

    status = stack.status().set_index("name")
    assert status.loc["tool", "state"] == "NotStarted"
    assert status.loc["uses-tool", "state"] == "Waiting"
    assert status.loc["other", "state"] == "Finished"

    stack.start("tool")

    assert stack.status().set_index("name").loc["tool", "state"] == "Healthy"
    with pytest.raises(StateError, match="Cannot start `tool` while it is Healthy"):
        stack.start("tool")


def test_restart_keeps_port_and_counts(make_stack):
    import httpx

    stack = make_stack()
    web = http_server(stack, "web")
    stack.up(timeout=60)
    url = web.url()
    first_pid = int(stack.status().pid.iloc[0])

    stack.restart("web")

    status = stack.status().set_index("name")
    assert web.url() == url
    assert status.loc["web", "state"] == "Healthy"
    assert status.loc["web", "restarts"] == 1
    assert int(status.loc["web", "pid"]) != first_pid
    assert httpx.get(url + "/", trust_env=False).status_code == 200


def test_stop_then_state_and_wrong_state_call(make_stack):
    stack = make_stack()
    stack.add_executable("sleeper", "sleep", ["30"])
    stack.up(timeout=60)

    stack.stop("sleeper")

    assert stack.status().state.iloc[0] == "Stopped"
    with pytest.raises(StateError, match="Cannot stop `sleeper` while it is Stopped"):
        stack.stop("sleeper")


def test_up_again_after_down(make_stack):
    stack = make_stack()
    web = http_server(stack, "web")
    stack.up(timeout=60)
    stack.down()

    stack.up(timeout=60)

    assert stack.status().set_index("name").loc["web", "state"] == "Healthy"
    assert web.url().startswith("http://127.0.0.1:")


def test_health_check_turns_unhealthy_and_back(make_stack):
    healthy = {"value": True}
    stack = make_stack()
    stack.add_executable("svc", "sleep", ["60"]).with_health_check(lambda: healthy["value"], name="flag")
    stack.up(timeout=60)

    healthy["value"] = False
    until_state(stack, "svc", "Unhealthy")
    healthy["value"] = True
    until_state(stack, "svc", "Healthy")

    events = stack.events()
    unhealthy = events[(events.resource == "svc") & (events.state == "Unhealthy")]
    assert "check flag returned False" in unhealthy.message.iloc[0]
    assert stack.status().set_index("name").loc["svc", "health"] == "Healthy"


def test_new_stack_same_state_dir_replaces_old(make_stack, state_root):
    state_dir = state_root / "shared"
    first = make_stack(state_dir=state_dir)
    first.add_executable("sleeper", "sleep", ["60"])
    first.up(timeout=60)
    old_pid = int(first.status().pid.iloc[0])

    second = make_stack(state_dir=state_dir)
    second.add_executable("sleeper", "sleep", ["60"])
    second.up(timeout=60)

    new_pid = int(second.status().pid.iloc[0])
    state = json.loads((state_dir / "state.json").read_text())
    assert not pid_alive(old_pid)
    assert state["resources"]["sleeper"]["pid"] == new_pid
    assert state["run_id"] == second.orchestrator.run_id


def test_up_without_wait_returns_before_ready(make_stack, tmp_path):
    gate = tmp_path / "gate"
    stack = make_stack()
    stack.add_executable("slow", "sleep", ["60"]).with_health_check(gate.exists, name="gate")

    stack.up(wait=False)

    assert stack.status().state.iloc[0] in ("NotStarted", "Starting", "Running")
    gate.write_text("open")
    until_state(stack, "slow", "Healthy")


def test_killed_app_loses_its_health(make_stack):
    stack = make_stack()
    http_server(stack, "web")
    stack.up(timeout=60)
    pid = int(stack.status().pid.iloc[0])

    psutil.Process(pid).kill()
    until_state(stack, "web", "Exited")

    status = stack.status().set_index("name")
    assert pd.isna(status.loc["web", "health"])
    assert status.loc["web", "exit_code"] == -9
