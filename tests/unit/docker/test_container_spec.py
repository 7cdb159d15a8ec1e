"""The create-container arguments DockerRuntime derives from a launch, and engine errors, without an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from homunculy_nb.errors import ConfigurationError, RuntimeUnavailableError
from homunculy_nb.runtimes import docker as docker_runtime
from homunculy_nb.runtimes.base import Launch
from homunculy_nb.runtimes.docker import LABEL_RESOURCE, LABEL_RUN_ID, LABEL_STACK, container_spec


def make_launch(tmp_path: Path, **options) -> Launch:
    options.setdefault("stack", "shop")
    options.setdefault("run_id", "0123456789abcdef")
    return Launch(name="api", run_dir=tmp_path, env={"A": "1"}, ports={"http": 8123}, options=options)


def test_spec_publishes_endpoints_on_loopback(tmp_path):
    spec = container_spec(make_launch(tmp_path, target_ports={"http": 80}), "img:1")
    assert spec["port_bindings"] == {"80/tcp": ("127.0.0.1", 8123)}
    assert spec["ports"] == [80]


def test_spec_names_labels_and_network(tmp_path):
    spec = container_spec(make_launch(tmp_path, target_ports={"http": 80}), "img:1")
    assert spec["name"] == "shop-api-01234567"
    assert spec["labels"] == {LABEL_STACK: "shop", LABEL_RESOURCE: "api", LABEL_RUN_ID: "0123456789abcdef"}
    assert spec["network"] == "homunculy-nb-shop"
    assert spec["aliases"] == ["api"]
    assert spec["extra_hosts"] == {"host.docker.internal": "host-gateway"}
    assert spec["environment"] == {"A": "1"}


def test_spec_mounts_and_volumes(tmp_path):
    launch = make_launch(tmp_path, target_ports={"http": 80}, bind_mounts=[(str(tmp_path), "/src", True)],
                         volumes=[("data", "/var/lib/data")])
    spec = container_spec(launch, "img:1")
    assert spec["mounts"] == [
        {"type": "bind", "source": str(tmp_path.resolve()), "target": "/src", "read_only": True},
        {"type": "volume", "source": "shop_data", "target": "/var/lib/data", "read_only": False},
    ]


def test_spec_rejects_missing_bind_source(tmp_path):
    launch = make_launch(tmp_path, target_ports={"http": 80}, bind_mounts=[(str(tmp_path / "nope"), "/x", False)])
    with pytest.raises(ConfigurationError, match="nope.*does not exist"):
        container_spec(launch, "img:1")


def test_spec_requires_target_port(tmp_path):
    with pytest.raises(ConfigurationError, match="Endpoint `http` of container `api` has no target port"):
        container_spec(make_launch(tmp_path), "img:1")


def test_spec_healthcheck_in_nanoseconds(tmp_path):
    launch = make_launch(tmp_path, target_ports={"http": 80},
                         health_check={"test": ["CMD", "true"], "interval": 0.5, "retries": 3})
    healthcheck = container_spec(launch, "img:1")["healthcheck"]
    assert healthcheck == {"test": ["CMD", "true"], "interval": 500_000_000, "timeout": 5_000_000_000,
                           "retries": 3, "start_period": 0}


def test_spec_args_fall_back_to_command(tmp_path):
    launch = make_launch(tmp_path, target_ports={"http": 80}, entrypoint=["/bin/sh", "-c"])
    launch.command = ["echo hi"]
    spec = container_spec(launch, "img:1")
    assert spec["command"] == ["echo hi"]
    assert spec["entrypoint"] == ["/bin/sh", "-c"]


def test_split_lines_joins_chunks():
    chunks = [b"first li", b"ne\r\nsecond\nthi", b"rd"]
    assert list(docker_runtime._split_lines(iter(chunks))) == ["first line", "second", "third"]


def test_unreachable_engine_names_docker_host(monkeypatch, tmp_path):
    socket_path = tmp_path / "no-engine.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    with pytest.raises(RuntimeUnavailableError) as caught:
        docker_runtime.check_engine()
    message = str(caught.value)
    assert f"DOCKER_HOST is unix://{socket_path}" in message
    assert "Start dockerd" in message


def test_volume_and_network_names_are_valid():
    assert docker_runtime.volume_name("my stack", "pg/data") == "my-stack_pg-data"
    assert docker_runtime.network_name("Homunculy") == "homunculy-nb-Homunculy"


def test_spec_forwards_host_ports_named_in_environment(tmp_path):
    launch = make_launch(tmp_path, target_ports={"http": 80}, host_ports=[7000])
    launch.env = {"API": "http://host.docker.internal:7001/v1", "OTHER": "host.docker.internal:7000"}
    assert container_spec(launch, "img:1")["host_ports"] == [7000, 7001]


def test_spec_forwards_stack_host_endpoints(tmp_path):
    from types import SimpleNamespace

    from homunculy_nb.stack import AllocatedEndpoint, Stack

    stack = Stack("shop", state_dir=tmp_path / "state", source_dir=tmp_path,
                  collector=SimpleNamespace(endpoints={"grpc": "http://127.0.0.1:14317"}))
    host_app = stack.add_uvicorn_app("api", "shop.api:app")
    host_app.endpoints["http"].allocated = AllocatedEndpoint("127.0.0.1", 18000)
    container = stack.add_container("web", "img").with_http_endpoint(target_port=80)
    container.endpoints["http"].allocated = AllocatedEndpoint("127.0.0.1", 18001)

    spec = container_spec(make_launch(tmp_path, target_ports={"http": 80}, resource=container), "img:1")

    assert spec["host_ports"] == [18000, 14317]
