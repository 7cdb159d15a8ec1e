"""The container DockerPostgresRuntime requests: official image, environment, volume, health check.

No registry is reachable here, so the official image itself cannot run in tests; these check the
container the runtime would create from it.
"""

from __future__ import annotations

from homunculy_nb.runtimes.base import Launch
from homunculy_nb.runtimes.docker import LABEL_RUN_ID, container_spec
from homunculy_nb.runtimes.docker_postgres import DATA_DIRECTORY, HEALTH_TEST, container_launch


def postgres_launch(tmp_path, persistent: bool) -> Launch:
    options = {
        "kind": "postgres", "stack": "shop", "user": "app", "password": "pw-value", "databases": ["orders", "reports"],
        "data_dir": tmp_path, "persistent": persistent, "data_volume": "orders-data" if persistent else None,
        "image": "postgres", "tag": "16", "labels": {"homunculy-nb.run": "abcd1234"},
        "target_ports": {"tcp": 5432},
    }
    return Launch(name="shop-postgres", run_dir=tmp_path, ports={"tcp": 55432}, options=options)


def test_postgres_container_uses_official_image(tmp_path):
    launch = container_launch(postgres_launch(tmp_path, persistent=True))
    spec = container_spec(launch, "postgres:16")
    assert launch.options["image"] == "postgres"
    assert launch.options["tag"] == "16"
    assert spec["port_bindings"] == {"5432/tcp": ("127.0.0.1", 55432)}


def test_postgres_container_environment(tmp_path):
    launch = container_launch(postgres_launch(tmp_path, persistent=True))
    assert launch.env == {"POSTGRES_USER": "app", "POSTGRES_PASSWORD": "pw-value", "POSTGRES_DB": "orders"}


def test_persistent_postgres_gets_named_volume(tmp_path):
    spec = container_spec(container_launch(postgres_launch(tmp_path, persistent=True)), "postgres:16")
    assert spec["mounts"] == [
        {"type": "volume", "source": "shop_orders-data", "target": DATA_DIRECTORY, "read_only": False}
    ]


def test_ephemeral_postgres_has_no_volume(tmp_path):
    spec = container_spec(container_launch(postgres_launch(tmp_path, persistent=False)), "postgres:16")
    assert spec["mounts"] == []


def test_postgres_health_check_queries_over_tcp(tmp_path):
    spec = container_spec(container_launch(postgres_launch(tmp_path, persistent=False)), "postgres:16")
    test = spec["healthcheck"]["test"]
    assert test == HEALTH_TEST
    assert "pg_isready -h 127.0.0.1" in test[1]
    assert 'psql -h 127.0.0.1' in test[1]
    assert "pw-value" not in test[1]


def test_postgres_container_carries_run_label(tmp_path):
    spec = container_spec(container_launch(postgres_launch(tmp_path, persistent=False)), "postgres:16")
    assert spec["labels"][LABEL_RUN_ID] == "abcd1234"
    assert spec["name"] == "shop-shop-postgres-abcd1234"
