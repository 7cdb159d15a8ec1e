"""Published Compose projects pass the Compose tool's own validation (`docker compose config`)."""

from __future__ import annotations

import pytest
import yaml

from homunculy_nb.publish import publish

pytestmark = pytest.mark.integration


def test_compose_config_accepts_published_project(shop, tmp_path, compose_config):
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


def test_compose_config_reads_env_file_copied_from_example(shop, tmp_path, compose_config):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    example = (out / ".env.example").read_text()
    (out / ".env").write_text(example.replace("SHOP_DB_PASSWORD=", "SHOP_DB_PASSWORD=filled-in"))

    result = compose_config(out, {})

    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["services"]["shop-postgres"]["environment"]["POSTGRES_PASSWORD"] == "filled-in"
