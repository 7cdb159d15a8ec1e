"""A small project and stack to publish: PostgreSQL with two databases, migrations, an app, a container."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from homunculy_nb.stack import Stack

# Values that must never appear in a published file.
KNOWN_SECRETS = ("Kn0wn-db-Passw0rd-7731", "sk-known-api-key-9917", "collector-key-5521")


@pytest.fixture(autouse=True)
def secrets_path(tmp_path, monkeypatch):
    """Point the user secrets file at a temporary path so no test touches the real home."""
    path = tmp_path / "config" / "secrets.json"
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(path))
    return path


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    (root / "shop" / "changelog").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "shop"\nversion = "0.1.0"\n')
    (root / "shop" / "__init__.py").write_text("")
    (root / "shop" / "api.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (root / "shop" / "changelog" / "changelog.xml").write_text("<databaseChangeLog/>\n")
    (root / "web").mkdir()
    (root / "web" / "Dockerfile").write_text("FROM busybox\n")
    (root / "static").mkdir()
    return root


@pytest.fixture
def shop(project, tmp_path):
    collector = SimpleNamespace(api_key=KNOWN_SECRETS[2],
                                endpoints={"grpc": "http://127.0.0.1:4317", "http": "http://127.0.0.1:4318"})
    stack = Stack("Shop_Stack", state_dir=tmp_path / "state", source_dir=project, collector=collector)
    password = stack.add_parameter("shop-db-password", secret=True, value=KNOWN_SECRETS[0])
    api_key = stack.add_parameter("openai-api-key", secret=True, value=KNOWN_SECRETS[1])
    log_level = stack.add_parameter("log-level", default="INFO")

    server = stack.add_postgres("shop-postgres", password=password).with_data_volume()
    orders = server.add_database("orders")
    server.add_database("reports")
    migrations = stack.add_migrations("shop-migrations", "shop/changelog/changelog.xml", orders)
    api = (
        stack.add_uvicorn_app("shop-api", "shop.api:app", cwd=project)
        .with_reference(orders)
        .with_environment("DB_HOST", server.host)
        .with_environment("OPENAI_API_KEY", api_key)
        .with_environment("LOGGING_LEVEL", log_level)
        .with_environment("PRICE_FORMAT", "$(amount) in $USD")
        .with_http_health_check("/health")
        .with_otlp_exporter()
        .wait_for_completion(migrations)
    )
    web = (
        stack.add_container("shop-web", "ignored")
        .with_dockerfile("web")
        .with_http_endpoint(port=9480, target_port=80, external=True)
        .with_bind_mount("static", "/www", read_only=True)
        .with_volume("web-cache", "/cache")
        .with_reference(api)
        .with_http_health_check("/")
        .wait_for(api)
    )
    return SimpleNamespace(stack=stack, server=server, orders=orders, migrations=migrations, api=api, web=web,
                           password=password)
