"""pgAdmin declarations: the resource per runtime, its server list and pgpass lines."""

from __future__ import annotations

import json

import pytest

from homunculy_nb.expressions import ResolveContext
from homunculy_nb.parameters import Secret
from homunculy_nb.pgadmin import add_pgadmin, pgpass, servers_json
from homunculy_nb.stack import AllocatedEndpoint, Stack

CONTAINER = ResolveContext(side="container")


@pytest.fixture(autouse=True)
def secrets_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(tmp_path / "secrets.json"))


def two_servers(tmp_path, runtime="auto"):
    stack = Stack("pga", state_dir=tmp_path / "state", source_dir=tmp_path, runtime=runtime)
    first = stack.add_postgres("first-pg", password=stack.add_parameter("first-pw", secret=True, value="a:b\\c"))
    first.add_database("orders")
    second = stack.add_postgres("second-pg", password=stack.add_parameter("second-pw", secret=True, value="pw2"))
    return stack, first, second


def allocate(server, port):
    server.endpoints["tcp"].allocated = AllocatedEndpoint("127.0.0.1", port)


def test_local_pgadmin_is_explicit_start_on_5050(tmp_path):
    stack, first, second = two_servers(tmp_path)
    pgadmin = add_pgadmin(stack)
    assert pgadmin.kind == "python_app"
    assert pgadmin.module == "homunculy_nb.pgadmin"
    assert pgadmin.explicit_start is True
    assert pgadmin.endpoints["http"].port == 5050
    assert [wait[0].name for wait in pgadmin.waits] == ["first-pg", "second-pg"]
    assert pgadmin.health_checks[0].path == "/misc/ping"


def test_docker_pgadmin_uses_official_image(tmp_path):
    stack, first, second = two_servers(tmp_path, runtime="docker")
    pgadmin = add_pgadmin(stack)
    assert (pgadmin.image, pgadmin.tag) == ("dpage/pgadmin4", "9")
    assert (pgadmin.endpoints["http"].port, pgadmin.endpoints["http"].target_port) == (5050, 80)
    assert pgadmin.environment["PGADMIN_CONFIG_SERVER_MODE"] == "False"
    assert pgadmin.explicit_start is True


def test_add_pgadmin_twice_returns_same_resource(tmp_path):
    stack, first, second = two_servers(tmp_path)
    assert add_pgadmin(stack) is add_pgadmin(stack)


def test_servers_json_lists_every_server_for_host(tmp_path):
    stack, first, second = two_servers(tmp_path)
    allocate(first, 15432)
    allocate(second, 15433)
    servers = json.loads(servers_json(stack, ResolveContext(), "/data/pgpass"))["Servers"]
    assert servers["1"] == {"Name": "first-pg", "Group": "pga", "Host": "127.0.0.1", "Port": 15432,
                            "MaintenanceDB": "orders", "Username": "postgres", "SSLMode": "prefer",
                            "PassFile": "/data/pgpass"}
    assert servers["2"]["Port"] == 15433
    assert servers["2"]["MaintenanceDB"] == "postgres"


def test_servers_json_from_container_uses_host_gateway(tmp_path):
    stack, first, second = two_servers(tmp_path)
    allocate(first, 15432)
    servers = json.loads(servers_json(stack, CONTAINER, "/tmp/pgpass"))["Servers"]
    assert (servers["1"]["Host"], servers["1"]["Port"]) == ("host.docker.internal", 15432)
    assert "2" not in servers  # not launched yet


def test_pgpass_escapes_and_stays_secret(tmp_path):
    stack, first, second = two_servers(tmp_path)
    allocate(first, 15432)
    allocate(second, 15433)
    lines = pgpass(stack, ResolveContext())
    assert isinstance(lines, Secret)
    assert lines.reveal().splitlines() == ["127.0.0.1:15432:*:postgres:a\\:b\\\\c", "127.0.0.1:15433:*:postgres:pw2"]
    assert "pw2" not in repr(lines)


def test_published_pgadmin_has_no_password(tmp_path):
    from homunculy_nb.publish import publish

    stack, first, second = two_servers(tmp_path, runtime="docker")
    add_pgadmin(stack)
    out = tmp_path / "compose"
    publish(stack, "compose", out)
    text = (out / "docker-compose.yaml").read_text()
    assert "pw2" not in text
    assert "HNB_PGADMIN_PGPASS: ${HNB_PGADMIN_PGPASS}" in text


def test_with_pgadmin_on_server_declares_resource(tmp_path):
    stack, first, second = two_servers(tmp_path)
    returned = second.with_pgadmin(port=None)
    assert returned is second
    assert stack.resources["pgadmin"].explicit_start is True
    assert stack.resources["pgadmin"].endpoints["http"].port is None
