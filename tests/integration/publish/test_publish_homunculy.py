"""The Homunculy stack publishes to Compose and Kubernetes with the dependencies and environment it runs with."""

from __future__ import annotations

import pytest
import yaml

from homunculy_nb.publish import publish
from homunculy_nb.publish._plan import dns_name, service_of
from homunculy_nb.stacks import homunculy_stack

pytestmark = pytest.mark.integration

KNOWN = {
    "PARAMETERS__HOMUNCULY_DB_PASSWORD": "known-homunculy-pg-4711",
    "PARAMETERS__MANAGEMENT_DB_PASSWORD": "known-management-pg-4712",
    "PARAMETERS__OPENAI_API_KEY": "sk-known-openai-4713",
    "PARAMETERS__ELEVENLABS_API_KEY": "known-elevenlabs-4714",
    "PARAMETERS__HOMUNCULY_API_KEY": "known-homunculy-api-4715",
}
CONDITIONS = {"healthy": "service_healthy", "completed": "service_completed_successfully"}


@pytest.fixture
def homunculy(monkeypatch, tmp_path):
    for key, value in KNOWN.items():
        monkeypatch.setenv(key, value)
    return homunculy_stack(state_dir=tmp_path / "state")


def published_text(out) -> str:
    return "\n".join(path.read_text(errors="replace") for path in out.rglob("*") if path.is_file())


def expected_depends_on(resource) -> dict:
    return {dns_name(service_of(wait[0]).name): {"condition": CONDITIONS[wait[1]]} for wait in resource.waits}


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_homunculy_publishes_no_secret(homunculy, tmp_path, target):
    out = tmp_path / target
    homunculy.publish(target, out)
    text = published_text(out)
    for value in KNOWN.values():
        assert value not in text


def test_homunculy_compose_keeps_waits_and_environment(homunculy, tmp_path, compose_config):
    out = tmp_path / "compose"
    publish(homunculy, "compose", out)
    services = yaml.safe_load((out / "docker-compose.yaml").read_text())["services"]

    for resource in homunculy.resources.values():
        if resource.kind == "database":
            continue
        service = services[dns_name(resource.name)]
        assert service.get("depends_on", {}) == expected_depends_on(resource), resource.name
        assert set(resource.environment) <= set(service.get("environment", {})), resource.name

    variables = {key.removeprefix("PARAMETERS__"): "x" for key in KNOWN}
    result = compose_config(out, variables)
    assert result.returncode == 0, result.stderr


def test_homunculy_compose_addresses_services_by_name(homunculy, tmp_path):
    out = tmp_path / "compose"
    publish(homunculy, "compose", out)
    services = yaml.safe_load((out / "docker-compose.yaml").read_text())["services"]

    agent = services["homunculy-app"]["environment"]
    assert agent["DB_HOST"] == "homunculy-postgres"
    assert agent["DB_PORT"] == "5432"
    assert agent["DB_PASSWORD"] == "${HOMUNCULY_DB_PASSWORD}"
    assert agent["PYTHONPATH"] == "/app"
    management = services["management-app"]["environment"]
    assert management["HOMUNCULY_BASE_URL"] == "http://homunculy-app:8000"
    assert management["SERVER_HOST"] == "0.0.0.0"
    assert management["HOMUNCULY_API_KEY"] == "${HOMUNCULY_API_KEY}"


def test_homunculy_kubernetes_manifests_validate(homunculy, tmp_path):
    from kubernetes.client import ApiClient

    out = tmp_path / "k8s"
    publish(homunculy, "kubernetes", out)
    api = ApiClient()
    kinds = set()
    for path in sorted(out.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for obj in yaml.safe_load_all(path.read_text()):
            model = api._ApiClient__deserialize(obj, f"V1{obj['kind']}")
            assert api.sanitize_for_serialization(model) == obj, path.name
            kinds.add(obj["kind"])
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap", "Secret"} <= kinds

    management = yaml.safe_load_all((out / "management-app.yaml").read_text())
    deployment = next(obj for obj in management if obj["kind"] == "Deployment")
    init = [container["name"] for container in deployment["spec"]["template"]["spec"]["initContainers"]]
    assert init == ["wait-management-postgres", "management-migrations", "wait-homunculy-app"]
    migrations = next(container for container in deployment["spec"]["template"]["spec"]["initContainers"]
                      if container["name"] == "management-migrations")
    env = {item["name"]: item for item in migrations["env"]}
    assert env["PGPASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "homunculy-secrets", "key": "MANAGEMENT_DB_PASSWORD"}}
    assert "MANAGEMENT_DB_PASSWORD" not in str(env["DATABASE_URI"])


def test_homunculy_images_install_services_extra(homunculy, tmp_path):
    import tomllib

    out = tmp_path / "compose"
    publish(homunculy, "compose", out)
    services = yaml.safe_load((out / "docker-compose.yaml").read_text())["services"]

    for name in ("homunculy-app", "management-app"):
        build = services[name]["build"]
        context = (out / build["context"]).resolve()
        dockerfile = (context / build["dockerfile"]).read_text()
        extras = tomllib.loads((context / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        # The services import their FastAPI instrumentation at start-up; the base dependencies lack it.
        assert 'RUN pip install --no-cache-dir ".[services]"' in dockerfile, name
        assert any(req.startswith("opentelemetry-instrumentation-fastapi") for req in extras["services"])

    migrations = (out / "build" / "homunculy-migrations" / "Dockerfile").read_text()
    assert "RUN pip install --no-cache-dir .\n" in migrations


@pytest.mark.parametrize("ports", ["default", "auto"])
def test_homunculy_compose_publishes_app_ports(monkeypatch, tmp_path, ports):
    for key, value in KNOWN.items():
        monkeypatch.setenv(key, value)
    stack = homunculy_stack(state_dir=tmp_path / "state", ports=ports)
    out = tmp_path / "compose"
    publish(stack, "compose", out)
    services = yaml.safe_load((out / "docker-compose.yaml").read_text())["services"]

    # A client reaches the agent and management APIs on their usual host ports; databases stay inside.
    assert services["homunculy-app"]["ports"] == ["8000:8000"]
    assert services["management-app"]["ports"] == ["8080:8080"]
    assert services["management-app"]["environment"]["SERVER_PORT"] == "8080"
    assert services["management-app"]["environment"]["HOMUNCULY_BASE_URL"] == "http://homunculy-app:8000"
    assert [name for name, service in services.items() if "ports" in service] == ["homunculy-app", "management-app"]
