"""DockerRuntime on a real engine: images, health, networking, logs, stop and orphan cleanup."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from homunculy_nb import _loop
from homunculy_nb.errors import PortInUseError
from homunculy_nb.runtimes import docker as docker_runtime
from homunculy_nb.runtimes.base import Launch
from homunculy_nb.runtimes.docker import DockerRuntime, LABEL_STACK


pytestmark = [pytest.mark.integration, pytest.mark.docker]


class Console:
    """Collects console lines the way the orchestrator receives them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    def text(self, stream: str | None = None) -> str:
        return "\n".join(line for s, line in self.lines if stream is None or s == stream)


def make_launch(stack: str, name: str, tmp_path: Path, console: Console | None = None, *,
                ports: dict[str, int | None] | None = None, env: dict[str, str] | None = None,
                **options) -> Launch:
    options.setdefault("stack", stack)
    options.setdefault("run_id", "run1")
    return Launch(
        name=name, run_dir=tmp_path, env=env or {}, ports=ports or {}, options=options,
        on_output=console or Console(),
    )


def start(launch: Launch):
    return _loop.run(DockerRuntime().start(launch), timeout=300)


def wait_until(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"Timed out after {timeout} s waiting for {what}")


def containers_of(engine, stack: str) -> list[dict]:
    return engine.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"})


def test_built_image_serves_http_and_turns_healthy(engine, base_image, httpd_context, stack_name, tmp_path):
    console = Console()
    launch = make_launch(
        stack_name, "web", tmp_path, console, ports={"http": None}, target_ports={"http": 80},
        dockerfile=(str(httpd_context), "Dockerfile", {"GREETING": "built-with-arg"}),
    )

    container = start(launch)
    try:
        assert "Successfully built" in console.text("system") or "Successfully tagged" in console.text("system")

        port = container.ports["http"]
        assert wait_until(lambda: _loop.run(container.probe(), timeout=30), what="HEALTHCHECK healthy")
        response = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=10)
        assert response.text == "hello from httpd\n"
        assert httpx.get(f"http://127.0.0.1:{port}/greeting.txt", timeout=10).text == "built-with-arg\n"
    finally:
        _loop.run(container.stop(timeout=5), timeout=60)


def test_container_without_healthcheck_probes_none(engine, base_image, stack_name, tmp_path):
    launch = make_launch(stack_name, "idle", tmp_path, image=base_image, args=["sleep", "600"])
    container = start(launch)
    try:
        assert _loop.run(container.probe(), timeout=30) is None
    finally:
        _loop.run(container.stop(timeout=1), timeout=60)


def test_one_shot_exit_code_and_removal(engine, base_image, stack_name, tmp_path):
    console = Console()
    launch = make_launch(stack_name, "job", tmp_path, console, image=base_image,
                         args=["sh", "-c", "echo step one; echo oops >&2; exit 3"])

    container = start(launch)
    code = _loop.run(container.wait(), timeout=120)

    assert code == 3
    assert "step one" in console.text("stdout")
    assert "oops" in console.text("stderr")
    wait_until(lambda: not containers_of(engine, stack_name), what="finished container removed")


def test_containers_reach_each_other_by_name(engine, base_image, httpd_image, stack_name, tmp_path):
    server = start(make_launch(stack_name, "web-a", tmp_path, image=httpd_image))
    try:
        wait_until(lambda: _loop.run(server.probe(), timeout=30), what="web-a healthy")
        console = Console()
        client = start(make_launch(stack_name, "client-b", tmp_path, console, image=base_image,
                                   args=["wget", "-q", "-O", "-", "http://web-a:80/index.html"]))
        code = _loop.run(client.wait(), timeout=120)

        assert code == 0
        assert "hello from httpd" in console.text("stdout")
    finally:
        _loop.run(server.stop(timeout=5), timeout=60)


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        body = b"hello from the host\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_container_reaches_host_process(engine, base_image, stack_name, tmp_path):
    host_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=host_server.serve_forever, daemon=True)
    thread.start()
    port = host_server.server_address[1]
    try:
        console = Console()
        launch = make_launch(stack_name, "caller", tmp_path, console, image=base_image, host_ports=[port],
                             args=["wget", "-q", "-O", "-", f"http://host.docker.internal:{port}/"])
        code = _loop.run(start(launch).wait(), timeout=120)

        assert code == 0
        assert "hello from the host" in console.text("stdout")
    finally:
        host_server.shutdown()
        host_server.server_close()


def test_environment_and_bind_mounts_arrive(engine, base_image, stack_name, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "message.txt").write_text("mounted content\n")
    console = Console()
    launch = make_launch(
        stack_name, "reader", tmp_path, console, env={"GREETING": "hi there"}, image=base_image,
        bind_mounts=[(str(data), "/data", True)],
        args=["sh", "-c", "echo \"greeting=$GREETING\"; cat /data/message.txt; touch /data/new || echo read-only"],
    )

    code = _loop.run(start(launch).wait(), timeout=120)

    assert code == 0
    lines = console.text("stdout").splitlines()
    assert "greeting=hi there" in lines
    assert "mounted content" in lines
    assert "read-only" in lines
    assert not (data / "new").exists()


def test_named_volume_outlives_container(engine, base_image, stack_name, tmp_path):
    writer = make_launch(stack_name, "writer", tmp_path, image=base_image, volumes=[("state", "/state")],
                         args=["sh", "-c", "echo kept > /state/file"])
    assert _loop.run(start(writer).wait(), timeout=120) == 0

    console = Console()
    reader = make_launch(stack_name, "reader", tmp_path, console, image=base_image, volumes=[("state", "/state")],
                         args=["cat", "/state/file"])
    assert _loop.run(start(reader).wait(), timeout=120) == 0
    assert console.text("stdout") == "kept"

    volume = docker_runtime.volume_name(stack_name, "state")
    assert engine.inspect_volume(volume)["Labels"][LABEL_STACK] == stack_name
    docker_runtime.remove_stack(stack_name, volumes=True)
    assert not engine.volumes(filters={"name": volume}).get("Volumes")


def test_stop_kills_after_timeout_and_leaves_nothing(engine, base_image, stack_name, tmp_path):
    # `sleep` as PID 1 has no SIGTERM handler, so the engine must kill it after the timeout.
    first = start(make_launch(stack_name, "stubborn", tmp_path, image=base_image, args=["sleep", "600"]))
    second = start(make_launch(stack_name, "other", tmp_path, image=base_image, args=["sleep", "600"]))
    network = docker_runtime.network_name(stack_name)
    assert engine.inspect_network(network)["Name"] == network

    code = _loop.run(first.stop(timeout=1), timeout=60)
    assert code == 137
    assert engine.networks(names=[network])

    _loop.run(second.stop(timeout=1), timeout=60)
    assert containers_of(engine, stack_name) == []
    assert [n for n in engine.networks(names=[network]) if n["Name"] == network] == []


def test_fixed_port_in_use_is_reported(engine, base_image, stack_name, tmp_path):
    import socket

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        launch = make_launch(stack_name, "clash", tmp_path, image=base_image, args=["sleep", "600"],
                             ports={"http": port}, target_ports={"http": 80})
        with pytest.raises(PortInUseError) as caught:
            start(launch)
        assert str(port) in str(caught.value)
        assert caught.value.port == port
        assert containers_of(engine, stack_name) == []
    finally:
        holder.close()


ORPHAN_SCRIPT = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path
    from homunculy_nb import _loop
    from homunculy_nb.runtimes.base import Launch
    from homunculy_nb.runtimes.docker import DockerRuntime

    stack, image, record_path = sys.argv[1:4]
    launch = Launch(name="leftover", run_dir=Path(record_path).parent, options={
        "stack": stack, "run_id": "crashed", "image": image, "args": ["sleep", "600"]})
    container = _loop.run(DockerRuntime().start(launch), timeout=120)
    Path(record_path).write_text(json.dumps(container.state_record()))
    time.sleep(600)
""")


def test_orphan_removed_after_launcher_is_killed(engine, base_image, stack_name, tmp_path):
    record_path = tmp_path / "state.json"
    env = dict(os.environ, PYTHONPATH=str(Path(docker_runtime.__file__).parents[2]))
    launcher = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, stack_name, base_image, str(record_path)], env=env,
    )
    try:
        wait_until(record_path.exists, timeout=120, what="launcher to start its container")
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()

    record = json.loads(record_path.read_text())
    assert engine.inspect_container(record["container_id"])["State"]["Running"] is True

    assert DockerRuntime.stop_orphan(record) is True

    assert containers_of(engine, stack_name) == []
    assert [n for n in engine.networks(names=[record["network"]]) if n["Name"] == record["network"]] == []
    assert DockerRuntime.stop_orphan(record) is False


def test_remove_stack_spares_current_run(engine, base_image, stack_name, tmp_path):
    old = start(make_launch(stack_name, "old", tmp_path, image=base_image, args=["sleep", "600"], run_id="old-run"))
    new = start(make_launch(stack_name, "new", tmp_path, image=base_image, args=["sleep", "600"], run_id="new-run"))
    try:
        assert docker_runtime.remove_stack(stack_name, keep_run_id="new-run") == 1
        remaining = containers_of(engine, stack_name)
        assert [c["Id"] for c in remaining] == [new.container_id]
        assert _loop.run(old.wait(), timeout=60) != 0
    finally:
        _loop.run(new.stop(timeout=1), timeout=60)


def test_missing_image_names_the_fix(engine, stack_name, tmp_path):
    from homunculy_nb.errors import ResourceError

    image = f"homunculy-nb-test/absent-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ResourceError) as caught:
        start(make_launch(stack_name, "ghost", tmp_path, image=image, tag="1"))
    assert f"{image}:1" in str(caught.value)
    assert "docker pull" in str(caught.value)
