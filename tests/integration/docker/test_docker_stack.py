"""Stacks with containers on a real Docker engine, driven by the orchestrator like a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from homunculy_nb.errors import RuntimeUnavailableError, StartupError
from homunculy_nb.runtimes import docker as docker_runtime
from homunculy_nb.runtimes.docker import LABEL_STACK
from homunculy_nb.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture(autouse=True)
def secrets_path(tmp_path, monkeypatch):
    path = tmp_path / "config" / "secrets.json"
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(path))
    return path


@pytest.fixture
def make_stack(stack_name, tmp_path):
    stacks = []

    def make(**kwargs) -> Stack:
        stack = Stack(stack_name, state_dir=tmp_path / "state", source_dir=tmp_path, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.down(timeout=2)


def containers_of(engine, stack: str) -> list[dict]:
    return engine.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"})


def status_of(stack: Stack, name: str) -> dict:
    frame = stack.status()
    return frame[frame["name"] == name].iloc[0].to_dict()


def wait_finished(stack: Stack, name: str, timeout: float = 120.0) -> dict:
    """Wait until a one-shot resource has ended (`up()` may return while it still runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = status_of(stack, name)
        if status["state"] in ("Finished", "Exited", "FailedToStart"):
            return status
        time.sleep(0.2)
    raise AssertionError(f"`{name}` did not end within {timeout} s; it is {status_of(stack, name)['state']}")


def log_lines(stack: Stack, name: str) -> list[str]:
    return list(stack.logs(name)["line"])


def test_container_serves_http_and_is_healthy(engine, httpd_context, make_stack):
    stack = make_stack()
    web = stack.add_container("web", "unused").with_dockerfile(httpd_context).with_http_endpoint(target_port=80)

    stack.up(timeout=180)

    assert status_of(stack, "web")["state"] == "Healthy"
    assert httpx.get(f"{web.url()}/index.html", timeout=10).text == "hello from httpd\n"
    assert any("Step" in line or "Successfully" in line for line in log_lines(stack, "web"))


def test_one_shot_container_releases_dependents(engine, base_image, make_stack):
    stack = make_stack()
    job = stack.add_container("job", base_image).with_args("sh", "-c", "echo job done")
    after = stack.add_container("after", base_image).with_args("sleep", "600").wait_for_completion(job)

    stack.up(timeout=180)

    assert status_of(stack, "job")["state"] == "Finished"
    assert status_of(stack, "after")["state"] in ("Running", "Healthy")
    assert "job done" in log_lines(stack, "job")
    assert after.name == "after"


def test_failing_one_shot_blocks_dependents(engine, base_image, make_stack):
    stack = make_stack()
    job = stack.add_container("job", base_image).with_args("sh", "-c", "echo broken >&2; exit 4")
    stack.add_container("after", base_image).with_args("sleep", "600").wait_for_completion(job)

    with pytest.raises(StartupError, match="job"):
        stack.up(timeout=180)
    assert status_of(stack, "after")["state"] == "NotStarted"


def test_containers_reach_each_other_by_name(engine, httpd_image, base_image, make_stack):
    stack = make_stack()
    web = stack.add_container("web", httpd_image).with_http_endpoint(target_port=80)
    (
        stack.add_container("fetch", base_image)
        .with_reference(web)
        .with_args("sh", "-c", 'echo "url=$WEB_HTTP"; wget -q -O - "$WEB_HTTP/index.html"')
        .wait_for(web)
    )
    stack.add_container("done", base_image).with_args("true").wait_for_completion(stack["fetch"])

    stack.up(timeout=180)

    assert wait_finished(stack, "fetch")["state"] == "Finished"
    lines = log_lines(stack, "fetch")
    assert "url=http://web:80" in lines
    assert "hello from httpd" in lines


def test_host_process_and_container_reach_each_other(engine, httpd_image, base_image, make_stack, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.txt").write_text("served by a host process\n")

    stack = make_stack()
    host_server = stack.add_executable("host-web", sys.executable).with_http_endpoint()
    host_server.with_args("-m", "http.server", host_server.endpoint("http").port, "--bind", "127.0.0.1",
                          "--directory", str(site))
    host_server.with_tcp_health_check()
    web = stack.add_container("web", httpd_image).with_http_endpoint(target_port=80)

    (
        stack.add_container("container-client", base_image)
        .with_environment("TARGET_HOST", host_server.endpoint("http").host)
        .with_environment("TARGET_PORT", host_server.endpoint("http").port)
        .with_args("sh", "-c", 'wget -q -O - "http://$TARGET_HOST:$TARGET_PORT/page.txt"')
        .wait_for(host_server)
    )
    fetch_container = textwrap.dedent("""\
        import os, urllib.request
        print(urllib.request.urlopen(os.environ["WEB_HTTP"] + "/index.html", timeout=10).read().decode(), end="")
    """)
    (
        stack.add_executable("host-client", sys.executable, args=["-c", fetch_container])
        .with_reference(web)
        .wait_for(web)
    )

    stack.up(timeout=180)

    assert wait_finished(stack, "container-client")["state"] == "Finished"
    assert "served by a host process" in log_lines(stack, "container-client")
    assert wait_finished(stack, "host-client")["state"] == "Finished"
    assert "hello from httpd" in log_lines(stack, "host-client")


def test_environment_and_bind_mount_arrive(engine, base_image, make_stack, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "note.txt").write_text("from the bind mount\n")
    stack = make_stack()
    secret = stack.add_parameter("token", secret=True, value="tok-3141")
    (
        stack.add_container("reader", base_image)
        .with_environment("GREETING", "hello container")
        .with_environment("TOKEN", secret)
        .with_bind_mount(data, "/data", read_only=True)
        .with_args("sh", "-c", 'echo "greeting=$GREETING"; cat /data/note.txt; test "$TOKEN" = tok-3141 && echo token-ok')
    )

    stack.up(timeout=180)

    assert wait_finished(stack, "reader")["state"] == "Finished"
    lines = log_lines(stack, "reader")
    assert "greeting=hello container" in lines
    assert "from the bind mount" in lines
    assert "token-ok" in lines


def test_down_leaves_no_container_or_network(engine, httpd_image, make_stack, stack_name):
    stack = make_stack()
    stack.add_container("web", httpd_image).with_http_endpoint(target_port=80).with_volume("cache", "/cache")
    stack.add_container("web2", httpd_image).with_http_endpoint(target_port=80)
    stack.up(timeout=180)
    assert len(containers_of(engine, stack_name)) == 2

    stack.down()

    assert containers_of(engine, stack_name) == []
    network = docker_runtime.network_name(stack_name)
    assert [n for n in engine.networks(names=[network]) if n["Name"] == network] == []
    volume = docker_runtime.volume_name(stack_name, "cache")
    assert engine.inspect_volume(volume)["Name"] == volume

    stack.down(volumes=True)
    assert not engine.volumes(filters={"name": volume}).get("Volumes")


def test_unreachable_engine_fails_before_start(base_image, make_stack, monkeypatch, tmp_path):
    stack = make_stack()
    marker = tmp_path / "started"
    stack.add_executable("local", sys.executable, args=["-c", f"open({str(marker)!r}, 'w').close()"])
    stack.add_container("web", base_image)

    with monkeypatch.context() as patch, pytest.raises(RuntimeUnavailableError) as caught:
        patch.setenv("DOCKER_HOST", f"unix://{tmp_path}/missing.sock")
        stack.up(timeout=60)
    assert f"DOCKER_HOST is unix://{tmp_path}/missing.sock" in str(caught.value)
    assert not marker.exists()


LAUNCHER = textwrap.dedent("""\
    import sys, time
    from homunculy_nb.stack import Stack

    name, state_dir, image = sys.argv[1:4]
    stack = Stack(name, state_dir=state_dir, source_dir=state_dir)
    stack.add_container("sleeper", image).with_args("sleep", "600")
    stack.up(timeout=120)
    print("up", flush=True)
    time.sleep(600)
""")


def test_orphans_removed_after_launcher_is_killed(engine, base_image, stack_name, tmp_path, secrets_path):
    state_dir = tmp_path / "state"
    env = dict(os.environ, PYTHONPATH=str(Path(docker_runtime.__file__).parents[2]),
               HOMUNCULY_NB_SECRETS_FILE=str(secrets_path))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, stack_name, str(state_dir), base_image],
                                env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert launcher.stdout.readline().strip() == "up"
    finally:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        launcher.stdout.close()

    leftover = containers_of(engine, stack_name)
    assert len(leftover) == 1
    assert leftover[0]["State"] == "running"

    stack = Stack(stack_name, state_dir=state_dir, source_dir=tmp_path)
    stack.add_container("sleeper", base_image).with_args("sleep", "600")
    stack.up(timeout=120)
    try:
        current = containers_of(engine, stack_name)
        assert [c["Id"] for c in current] != [leftover[0]["Id"]]
        assert len(current) == 1
    finally:
        stack.down(timeout=2)
    deadline = time.monotonic() + 30
    while containers_of(engine, stack_name) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert containers_of(engine, stack_name) == []
    assert json.loads(json.dumps(leftover[0]["Labels"]))[LABEL_STACK] == stack_name


def test_postgres_on_docker_serves_host_and_containers(engine, postgres_image, make_stack, stack_name, tmp_path):
    changelog = tmp_path / "changelog"
    changelog.mkdir()
    (changelog / "001_items.sql").write_text("CREATE TABLE items (name text);\nINSERT INTO items VALUES ('kept');\n")

    def declare() -> Stack:
        stack = make_stack()
        password = stack.add_parameter("pg-password", secret=True, value="docker-pg-pw-1")
        server = stack.add_postgres("pg", password=password, runtime="docker", image=postgres_image.split(":")[0],
                                    tag="15").with_data_volume()
        orders = server.add_database("orders")
        server.add_database("reports")
        migrations = stack.add_migrations("migrate", changelog, orders)
        (
            stack.add_container("reader", postgres_image)
            .with_reference(orders)
            .with_entrypoint("/bin/sh", "-c")
            .with_args('psql "$ORDERS_URI" -tAc "SELECT name FROM items"')
            .wait_for_completion(migrations)
        )
        return stack

    import psycopg

    stack = declare()
    stack.up(timeout=240)

    assert status_of(stack, "pg")["state"] == "Healthy"
    assert wait_finished(stack, "reader")["state"] == "Finished"
    assert "kept" in log_lines(stack, "reader")
    port = stack["pg"].endpoints["tcp"].allocated.port
    for database in ("orders", "reports"):
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="docker-pg-pw-1",
                             dbname=database) as connection:
            assert connection.execute("SELECT current_database()").fetchone() == (database,)

    stack.down()
    assert containers_of(engine, stack_name) == []

    again = declare()
    again.up(timeout=240)
    port = again["pg"].endpoints["tcp"].allocated.port
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="docker-pg-pw-1",
                         dbname="orders") as connection:
        assert connection.execute("SELECT name FROM items").fetchall() == [("kept",)]


def test_declared_health_check_and_restart(engine, httpd_image, make_stack, stack_name):
    stack = make_stack()
    web = (
        stack.add_container("web", httpd_image)
        .with_http_endpoint(target_port=80)
        .with_http_health_check("/index.html")
    )
    stack.up(timeout=180)
    first = containers_of(engine, stack_name)
    port = web.endpoints["http"].allocated.port

    stack.restart("web", timeout=180)

    assert status_of(stack, "web")["state"] == "Healthy"
    second = containers_of(engine, stack_name)
    assert len(second) == 1
    assert second[0]["Id"] != first[0]["Id"]
    assert web.endpoints["http"].allocated.port == port
    assert httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=10).text == "hello from httpd\n"
