"""Publishing a stack as Compose and Kubernetes files: structure, variables, secrets, object schemas."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.publish import publish

KNOWN_SECRETS = ("Kn0wn-db-Passw0rd-7731", "sk-known-api-key-9917", "collector-key-5521")
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def read_compose(out: Path) -> dict:
    return yaml.safe_load((out / "docker-compose.yaml").read_text())


def read_manifests(out: Path) -> list[dict]:
    documents = []
    for path in sorted(out.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def all_text(out: Path) -> str:
    return "\n".join(path.read_text(errors="replace") for path in out.rglob("*") if path.is_file())


# -- Compose --------------------------------------------------------------------------------------------


def test_compose_has_service_per_resource(shop, tmp_path):
    services = read_compose_after_publish(shop, tmp_path)["services"]
    assert list(services) == ["shop-postgres", "shop-migrations", "shop-api", "shop-web"]


def read_compose_after_publish(shop, tmp_path):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    return read_compose(out)


def test_compose_postgres_uses_official_image_and_volume(shop, tmp_path):
    postgres = read_compose_after_publish(shop, tmp_path)["services"]["shop-postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["environment"]["POSTGRES_PASSWORD"] == "${SHOP_DB_PASSWORD}"
    assert postgres["environment"]["POSTGRES_DB"] == "orders"
    assert "shop-postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]


def test_compose_creates_second_database_by_init_script(shop, tmp_path):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    assert (out / "initdb" / "shop-postgres" / "create-databases.sql").read_text() == 'CREATE DATABASE "reports";\n'
    assert "./initdb/shop-postgres:/docker-entrypoint-initdb.d:ro" in read_compose(out)["services"]["shop-postgres"]["volumes"]


def test_compose_depends_on_follows_waits(shop, tmp_path):
    services = read_compose_after_publish(shop, tmp_path)["services"]
    assert services["shop-migrations"]["depends_on"] == {"shop-postgres": {"condition": "service_healthy"}}
    assert services["shop-api"]["depends_on"] == {"shop-migrations": {"condition": "service_completed_successfully"}}
    assert services["shop-web"]["depends_on"] == {"shop-api": {"condition": "service_healthy"}}


def test_compose_references_resolve_to_service_names(shop, tmp_path):
    services = read_compose_after_publish(shop, tmp_path)["services"]
    api_env = services["shop-api"]["environment"]
    assert api_env["DB_HOST"] == "shop-postgres"
    assert api_env["ORDERS_URI"] == "postgresql://postgres:${SHOP_DB_PASSWORD}@shop-postgres:5432/orders"
    assert services["shop-web"]["environment"]["services__shop-api__http__0"] == "http://shop-api:8000"
    # The password travels in PGPASSWORD, so characters such as @ or / in it cannot break the URI.
    assert services["shop-migrations"]["environment"]["DATABASE_URI"] == "postgresql://postgres@shop-postgres:5432/orders"
    assert services["shop-migrations"]["environment"]["PGPASSWORD"] == "${SHOP_DB_PASSWORD}"


def test_compose_parameters_become_variables(shop, tmp_path):
    api_env = read_compose_after_publish(shop, tmp_path)["services"]["shop-api"]["environment"]
    assert api_env["OPENAI_API_KEY"] == "${OPENAI_API_KEY}"
    assert api_env["LOGGING_LEVEL"] == "${LOG_LEVEL:-INFO}"
    assert api_env["OTEL_EXPORTER_OTLP_HEADERS"] == "${OTEL_EXPORTER_OTLP_HEADERS}"


def test_compose_otlp_settings_for_deployment(shop, tmp_path):
    services = read_compose_after_publish(shop, tmp_path)["services"]
    api = services["shop-api"]

    # The collector's address is the deployer's to set; a launch's instance id is not published.
    assert api["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        "${OTEL_EXPORTER_OTLP_ENDPOINT:-http://host.docker.internal:4317}")
    assert "service.instance.id" not in api["environment"]["OTEL_RESOURCE_ATTRIBUTES"]
    assert api["extra_hosts"] == ["host.docker.internal:host-gateway"]


def test_compose_escapes_literal_dollars(shop, tmp_path):
    api_env = read_compose_after_publish(shop, tmp_path)["services"]["shop-api"]["environment"]
    assert api_env["PRICE_FORMAT"] == "$$(amount) in $$USD"


def test_compose_ports_only_for_external_endpoints(shop, tmp_path):
    services = read_compose_after_publish(shop, tmp_path)["services"]
    assert services["shop-web"]["ports"] == ["9480:80"]
    assert [name for name, service in services.items() if "ports" in service] == ["shop-web"]


def test_compose_one_network_for_all(shop, tmp_path):
    document = read_compose_after_publish(shop, tmp_path)
    assert list(document["networks"]) == ["shop-stack"]
    assert {tuple(service["networks"]) for service in document["services"].values()} == {("shop-stack",)}


def test_compose_builds_python_apps_from_generated_dockerfile(shop, tmp_path, project):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    api = read_compose(out)["services"]["shop-api"]

    context = (out / api["build"]["context"]).resolve()
    assert context == project.resolve()
    dockerfile = (context / api["build"]["dockerfile"]).resolve()
    assert dockerfile == (out / "build" / "shop-api" / "Dockerfile").resolve()
    assert "RUN pip install --no-cache-dir ." in dockerfile.read_text()
    assert api["command"] == ["python", "-m", "uvicorn", "shop.api:app", "--host", "0.0.0.0", "--port", "8000"]


def test_compose_migrations_run_changelog_inside_image(shop, tmp_path):
    migrations = read_compose_after_publish(shop, tmp_path)["services"]["shop-migrations"]
    assert migrations["command"] == ["python", "-m", "homunculy_nb.migrations", "shop/changelog/changelog.xml"]
    assert migrations["restart"] == "no"


def test_compose_container_keeps_dockerfile_mounts_and_volumes(shop, tmp_path, project):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    document = read_compose(out)
    web = document["services"]["shop-web"]
    assert (out / web["build"]["context"]).resolve() == (project / "web").resolve()
    assert web["build"]["dockerfile"] == "Dockerfile"
    bind = next(mount for mount in web["volumes"] if mount.endswith(":/www:ro"))
    assert (out / bind.split(":")[0]).resolve() == (project / "static").resolve()
    assert "web-cache:/cache" in web["volumes"]
    assert set(document["volumes"]) == {"shop-postgres-data", "web-cache"}


def test_env_example_lists_variables_without_values(shop, tmp_path):
    out = tmp_path / "compose"
    publish(shop.stack, "compose", out)
    assignments = [line for line in (out / ".env.example").read_text().splitlines() if not line.startswith("#")]
    assert assignments == ["SHOP_DB_PASSWORD=", "OPENAI_API_KEY=", "LOG_LEVEL=", "OTEL_EXPORTER_OTLP_HEADERS=",
                           "OTEL_EXPORTER_OTLP_ENDPOINT="]


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_no_secret_value_in_published_files(shop, tmp_path, target):
    out = tmp_path / target
    publish(shop.stack, target, out)
    text = all_text(out)
    for secret in KNOWN_SECRETS:
        assert secret not in text


def test_publish_leaves_model_ports_unallocated(shop, tmp_path):
    publish(shop.stack, "compose", tmp_path / "compose")
    assert shop.api.endpoints["http"].target_port is None
    assert shop.api.endpoints["http"].port is None


def test_unknown_target_is_rejected(shop, tmp_path):
    with pytest.raises(ConfigurationError, match="Invalid publish target 'helm'"):
        publish(shop.stack, "helm", tmp_path / "out")


def test_parameter_in_args_is_rejected(shop, tmp_path):
    shop.api.with_args("--token", shop.password)
    with pytest.raises(ConfigurationError, match="argument of `shop-api` contains a parameter"):
        publish(shop.stack, "compose", tmp_path / "out")


# -- Kubernetes -----------------------------------------------------------------------------------------


def kubernetes_objects(shop, tmp_path) -> list[dict]:
    out = tmp_path / "k8s"
    publish(shop.stack, "kubernetes", out)
    return read_manifests(out)


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def validate(obj: dict) -> None:
    """Round-trip `obj` through the kubernetes package's model: unknown fields vanish, missing ones raise."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    model = api._ApiClient__deserialize(obj, f"V1{obj['kind']}")
    assert api.sanitize_for_serialization(model) == obj


def test_kubernetes_objects_match_schemas(shop, tmp_path):
    objects = kubernetes_objects(shop, tmp_path)
    assert {obj["kind"] for obj in objects} == {
        "ConfigMap", "Secret", "StatefulSet", "Deployment", "Service", "PersistentVolumeClaim",
    }
    for obj in objects:
        validate(obj)


def test_kubernetes_names_are_dns_labels(shop, tmp_path):
    for obj in kubernetes_objects(shop, tmp_path):
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]


def test_kubernetes_postgres_is_statefulset_with_claim(shop, tmp_path):
    statefulset = by_kind(kubernetes_objects(shop, tmp_path), "StatefulSet")["shop-postgres"]
    spec = statefulset["spec"]
    assert spec["volumeClaimTemplates"][0]["metadata"]["name"] == "shop-postgres-data"
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == "postgres:16"
    assert container["readinessProbe"]["exec"]["command"][0] == "pg_isready"
    password = next(item for item in container["env"] if item["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"] == {"secretKeyRef": {"name": "shop-stack-secrets", "key": "SHOP_DB_PASSWORD"}}


def test_kubernetes_service_per_resource_with_endpoint(shop, tmp_path):
    services = by_kind(kubernetes_objects(shop, tmp_path), "Service")
    assert set(services) == {"shop-postgres", "shop-api", "shop-web"}
    assert services["shop-postgres"]["spec"]["ports"][0]["port"] == 5432


def test_kubernetes_migrations_run_before_dependent(shop, tmp_path):
    deployment = by_kind(kubernetes_objects(shop, tmp_path), "Deployment")["shop-api"]
    init = deployment["spec"]["template"]["spec"]["initContainers"]
    assert [container["name"] for container in init] == ["wait-shop-postgres", "shop-migrations"]
    assert init[1]["args"] == ["python", "-m", "homunculy_nb.migrations", "shop/changelog/changelog.xml"]


def test_kubernetes_secret_template_has_empty_values(shop, tmp_path):
    secret = by_kind(kubernetes_objects(shop, tmp_path), "Secret")["shop-stack-secrets"]
    assert secret["stringData"] == {"SHOP_DB_PASSWORD": "", "OPENAI_API_KEY": "", "OTEL_EXPORTER_OTLP_HEADERS": ""}


def test_kubernetes_composite_values_expand_secret_variables(shop, tmp_path):
    deployment = by_kind(kubernetes_objects(shop, tmp_path), "Deployment")["shop-api"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [item["name"] for item in env]
    uri = next(item for item in env if item["name"] == "ORDERS_URI")
    assert uri["value"] == "postgresql://postgres:$(HNB_SHOP_DB_PASSWORD)@shop-postgres:5432/orders"
    assert names.index("HNB_SHOP_DB_PASSWORD") < names.index("ORDERS_URI")


def test_kubernetes_plain_settings_in_configmap(shop, tmp_path):
    objects = kubernetes_objects(shop, tmp_path)
    config = by_kind(objects, "ConfigMap")["shop-api-config"]["data"]
    assert config["DB_HOST"] == "shop-postgres"
    assert config["PRICE_FORMAT"] == "$(amount) in $USD"
    assert by_kind(objects, "ConfigMap")["shop-stack-parameters"]["data"] == {
        "LOG_LEVEL": "INFO", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://host.docker.internal:4317"}


def test_kubernetes_readiness_probe_from_http_check(shop, tmp_path):
    deployment = by_kind(kubernetes_objects(shop, tmp_path), "Deployment")["shop-api"]
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": 8000}


def test_kubernetes_lone_one_shot_becomes_job(tmp_path, project):
    from homunculy_nb.stack import Stack

    stack = Stack("jobs", state_dir=tmp_path / "state", source_dir=project)
    server = stack.add_postgres("db", password=stack.add_parameter("pw", secret=True, value="x"))
    stack.add_migrations("migrate", "shop/changelog/changelog.xml", server.add_database("main"))
    out = tmp_path / "k8s"
    publish(stack, "kubernetes", out)

    jobs = by_kind(read_manifests(out), "Job")
    assert list(jobs) == ["migrate"]
    validate(jobs["migrate"])
    assert jobs["migrate"]["spec"]["template"]["spec"]["initContainers"][0]["name"] == "wait-db"


def test_kubernetes_warns_about_host_addresses(shop, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="homunculy_nb.publish"):
        publish(shop.stack, "kubernetes", tmp_path / "k8s")
    assert any("`shop-api` reaches the host through host.docker.internal" in message for message in caplog.messages)
