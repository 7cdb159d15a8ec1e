"""Published Compose projects pass the Compose tool's own validation (`docker compose config`)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml

from homunculy_nb.publish import publish

pytestmark = pytest.mark.integration


def compose_command() -> list[str]:
    """Return the Compose CLI: the `docker compose` plugin when present, else Debian's docker-compose."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("No Compose CLI found. Install Debian's docker-compose: bash scripts/system-deps.sh docker")


def compose_config(out, variables: dict[str, str]) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "DOCKER_HOST"}
    env.update(variables)
    return subprocess.run([*compose_command(), "-f", str(out / "docker-compose.yaml"), "config"],
                          cwd=out, env=env, capture_output=True, text=True, timeout=120)


def test_compose_config_accepts_published_project(shop, tmp_path):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)

    result = compose_config(out, {"SHOP_DB_PASSWORD": "from-env", "OPENAI_API_KEY": "k",
                                  "OTEL_EXPORTER_OTLP_HEADERS": "h"})

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert set(config["services"]) == {"shop-postgres", "shop-migrations", "shop-api", "shop-web"}
    api_env = config["services"]["shop-api"]["environment"]
    assert api_env["ORDERS_URI"] == "postgresql://postgres:from-env@shop-postgres:5432/orders"
    assert api_env["LOGGING_LEVEL"] == "INFO"
    # `config` prints the file form, so an escaped dollar stays doubled.
    assert api_env["PRICE_FORMAT"] == "$$(amount) in $$USD"


def test_compose_config_reads_env_file_copied_from_example(shop, tmp_path):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    example = (out / ".env.example").read_text()
    (out / ".env").write_text(example.replace("SHOP_DB_PASSWORD=", "SHOP_DB_PASSWORD=filled-in"))

    result = compose_config(out, {})

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["services"]["shop-postgres"]["environment"]["POSTGRES_PASSWORD"] == "filled-in"
