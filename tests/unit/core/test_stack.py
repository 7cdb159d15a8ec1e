"""The app model: builders, introspection, references, expressions and OTLP settings."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from homunculy_nb.errors import ConfigurationError, StateError
from homunculy_nb.expressions import ReferenceExpression, ResolveContext
from homunculy_nb.health import CallableHealthCheck, HttpHealthCheck, TcpHealthCheck
from homunculy_nb.parameters import Secret
from homunculy_nb.stack import AllocatedEndpoint, Stack


def allocate(resource, port, name=None):
    endpoint = resource.endpoints[name or next(iter(resource.endpoints))]
    endpoint.allocated = AllocatedEndpoint("127.0.0.1", port)


@pytest.fixture
def topology(stack):
    password = stack.add_parameter("db-password", secret=True, value="p@ss word")
    server = stack.add_postgres("homunculy-postgres", port=5999, password=password)
    database = server.add_database("homunculy")
    migrations = stack.add_migrations("homunculy-migrations", "db/changelog.xml", database)
    app = (
        stack.add_uvicorn_app("homunculy-app", "service.main:app")
        .with_reference(database)
        .with_http_health_check("/health")
        .wait_for_completion(migrations)
    )
    return SimpleNamespace(password=password, server=server, database=database, migrations=migrations, app=app)


def test_resources_keep_declaration_order(stack, topology):
    assert list(stack.resources) == ["homunculy-postgres", "homunculy", "homunculy-migrations", "homunculy-app"]
    assert list(stack.parameters) == ["db-password"]


def test_kinds(topology):
    assert topology.server.kind == "postgres"
    assert topology.database.kind == "database"
    assert topology.migrations.kind == "migrations"
    assert topology.app.kind == "uvicorn_app"
    assert topology.password.kind == "parameter"


def test_database_parent_is_server(topology):
    assert topology.database.parent is topology.server
    assert topology.server.databases == {"homunculy": topology.database}


def test_migrations_wait_for_server_healthy(topology):
    assert topology.migrations.waits == [(topology.server, "healthy")]


def test_wait_for_completion_records_exit_code(stack, topology):
    job = stack.add_executable("job", "true")
    topology.app.wait_for_completion(job, exit_code=3)

    assert topology.app.waits[0] == (topology.migrations, "completed")
    assert topology.app.waits[1].exit_code == 3
    assert topology.app.dependencies() == [topology.migrations, job]


def test_migrations_changelog_resolved_beside_stack_file(stack, tmp_path, topology):
    assert topology.migrations.changelog == tmp_path / "db" / "changelog.xml"
    assert topology.migrations.command[1:3] == ["-m", "homunculy_nb.migrations"]


def test_duplicate_names_rejected(stack, topology):
    with pytest.raises(ConfigurationError, match="already has"):
        stack.add_executable("homunculy-app", "true")
    with pytest.raises(ConfigurationError, match="already has"):
        stack.add_parameter("homunculy")


def test_invalid_resource_name_rejected(stack):
    with pytest.raises(ConfigurationError, match="Invalid resource name"):
        stack.add_executable("has space", "true")


def test_invalid_stack_arguments_rejected():
    with pytest.raises(ConfigurationError, match="Invalid stack name"):
        Stack("bad/name")
    with pytest.raises(ConfigurationError, match="Invalid runtime"):
        Stack("ok", runtime="kubernetes")


def test_default_state_dir_under_xdg_state_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))

    assert Stack("demo").state_dir == tmp_path / "homunculy-nb" / "demo"


def test_source_dir_is_callers_file_directory():
    from pathlib import Path

    assert Stack("here").source_dir == Path(__file__).resolve().parent


def test_postgres_without_password_gets_generated_parameter(stack):
    server = stack.add_postgres("pg")

    assert server.password is stack.parameters["pg-password"]
    assert server.password.secret is True
    assert server.password.generate is True


def test_postgres_endpoint_and_volume(stack):
    server = stack.add_postgres("pg", port=6000)

    assert server.endpoints["tcp"].port == 6000
    assert server.endpoints["tcp"].target_port == 5432
    assert server.persistent is False
    assert server.with_data_volume().data_volume == "pg-data"
    assert server.persistent is True


def test_fixed_port_out_of_range_rejected(stack):
    with pytest.raises(ConfigurationError, match="Invalid port 70000"):
        stack.add_uvicorn_app("api", "m:app", port=70000)


def test_invalid_asgi_app_rejected(stack):
    with pytest.raises(ConfigurationError, match="module:attribute"):
        stack.add_uvicorn_app("api", "module_only")


def test_expression_before_launch_names_resource(topology):
    with pytest.raises(StateError, match="`homunculy-postgres`"):
        topology.server.port.value
    with pytest.raises(StateError, match="`homunculy-app`"):
        topology.app.url()


def test_expressions_after_allocation(topology):
    allocate(topology.server, 5999)
    allocate(topology.app, 6100)

    assert topology.server.host.value == "127.0.0.1"
    assert topology.server.port.value == "5999"
    assert topology.app.endpoint("http").url.value == "http://127.0.0.1:6100"
    assert topology.app.url() == "http://127.0.0.1:6100"
    assert topology.app.websocket_url("/api/v1/ws/chat") == "ws://127.0.0.1:6100/api/v1/ws/chat"


def test_connection_string_is_secret_and_quoted(topology):
    allocate(topology.server, 5999)
    value = topology.database.connection_string.value

    assert isinstance(value, Secret)
    assert value.reveal() == "postgresql://postgres:p%40ss%20word@127.0.0.1:5999/homunculy"
    assert "p@ss" not in repr(topology.database.connection_string)
    assert "p@ss" not in topology.database.connection_string.describe()


def test_database_reference_variables(topology):
    allocate(topology.server, 5999)
    env = topology.app.environment

    assert env["ConnectionStrings__homunculy"].reveal() == "postgresql://postgres:p%40ss%20word@127.0.0.1:5999/homunculy"
    assert env["HOMUNCULY_HOST"].value == "127.0.0.1"
    assert env["HOMUNCULY_PORT"].value == "5999"
    assert env["HOMUNCULY_USERNAME"] == "postgres"
    assert env["HOMUNCULY_PASSWORD"] is topology.password
    assert env["HOMUNCULY_URI"].reveal().startswith("postgresql://postgres:")
    assert env["HOMUNCULY_DATABASENAME"] == "homunculy"


def test_app_reference_variables(stack, topology):
    allocate(topology.app, 6100)
    client = stack.add_python_app("client", "client.py").with_reference(topology.app)

    assert client.environment["services__homunculy-app__http__0"].value == "http://127.0.0.1:6100"
    assert client.environment["HOMUNCULY_APP_HTTP"].value == "http://127.0.0.1:6100"


def test_reference_to_resource_without_endpoints_rejected(stack):
    job = stack.add_executable("job", "true")

    with pytest.raises(ConfigurationError, match="no endpoints"):
        stack.add_executable("other", "true").with_reference(job)


def test_container_side_resolution(stack, topology):
    allocate(topology.server, 5999)
    container_side = ResolveContext(side="container")

    assert topology.server.host.resolve(container_side) == "host.docker.internal"
    assert topology.server.port.resolve(container_side) == "5999"


def test_manifest_side_uses_service_names_and_placeholders(topology):
    manifest = ResolveContext(side="manifest", parameter=lambda p: "${DB_PASSWORD}")
    resolved = topology.database.connection_string.resolve(manifest)

    assert resolved == "postgresql://postgres:${DB_PASSWORD}@homunculy-postgres:5432/homunculy"


def test_docker_runtime_postgres_is_container(tmp_path):
    stack = Stack("d", state_dir=tmp_path, runtime="docker")
    server = stack.add_postgres("pg")
    allocate(server, 7000)

    assert server.runs_in_container is True
    assert server.host.resolve(ResolveContext(side="container")) == "pg"
    assert server.port.resolve(ResolveContext(side="container")) == "5432"
    assert server.host.value == "127.0.0.1"


def test_postgres_runtime_argument(stack):
    assert stack.add_postgres("local-pg", runtime="local").runs_in_container is False
    assert stack.add_postgres("docker-pg", runtime="docker").runs_in_container is True
    with pytest.raises(ConfigurationError, match="Invalid runtime"):
        stack.add_postgres("bad", runtime="podman")


def test_with_environment_values(stack, topology):
    allocate(topology.server, 5999)
    app = (
        stack.add_executable("env", "env")
        .with_environment("DB_HOST", topology.server.host)
        .with_environment("DB_PASSWORD", topology.password)
        .with_environment("WORKERS", 4)
        .with_environment("DEBUG", True)
    )

    assert app.environment["DB_HOST"].value == "127.0.0.1"
    assert app.environment["DB_PASSWORD"].value.reveal() == "p@ss word"
    assert app.environment["WORKERS"] == "4"
    assert app.environment["DEBUG"] == "true"


def test_with_environment_rejects_unknown_type(stack):
    with pytest.raises(ConfigurationError, match="Invalid environment value"):
        stack.add_executable("x", "true").with_environment("K", object())


def test_reference_expression_template(topology):
    allocate(topology.server, 5999)
    expression = ReferenceExpression("{}:{}", topology.server.host, topology.server.port)

    assert expression.value == "127.0.0.1:5999"
    assert expression.resources() == [topology.server]


def test_health_check_declarations(stack):
    def ready():
        return True

    app = (
        stack.add_uvicorn_app("api", "m:app")
        .with_http_health_check("/ready")
        .with_tcp_health_check()
        .with_health_check(ready)
    )

    assert app.health_checks[0] == HttpHealthCheck("/ready", "http")
    assert app.health_checks[1] == TcpHealthCheck(None)
    assert isinstance(app.health_checks[2], CallableHealthCheck)
    with pytest.raises(ConfigurationError, match="must start with"):
        app.with_http_health_check("ready")


def test_explicit_start_and_args(stack):
    tool = stack.add_executable("tool", "echo", args=["a"]).with_args("b", 3).with_explicit_start()

    assert tool.explicit_start is True
    assert tool.args == ["a", "b", "3"]


def test_python_app_script_or_module(stack, tmp_path):
    script = stack.add_python_app("script", "worker.py")
    module = stack.add_python_app("module", "http.server", args=["0"])

    assert script.script == tmp_path / "worker.py"
    assert script.module is None
    assert module.module == "http.server"


def test_uvicorn_python_prefers_app_venv(stack, tmp_path):
    venv_python = tmp_path / "svc" / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")

    own = stack.add_uvicorn_app("own", "m:app", cwd="svc")
    shared = stack.add_uvicorn_app("shared", "m:app")

    assert own.python == str(venv_python)
    assert shared.python == sys.executable


def test_uvicorn_gets_port_variable(stack):
    app = stack.add_uvicorn_app("api", "m:app")
    allocate(app, 6200)

    assert app.environment["PORT"].value == "6200"


def test_container_declarations(stack, tmp_path):
    container = (
        stack.add_container("web", "busybox", tag="1.36")
        .with_http_endpoint(port=None, target_port=80)
        .with_bind_mount("site", "/srv", read_only=True)
        .with_volume("cache", "/cache")
        .with_entrypoint("httpd", "-f")
        .with_args("-p", "80")
        .with_dockerfile("images/web", build_args={"VERSION": "1"})
    )

    assert container.kind == "container"
    assert (container.image, container.tag) == ("busybox", "1.36")
    assert container.bind_mounts == [(str(tmp_path / "site"), "/srv", True)]
    assert container.volumes == [("cache", "/cache")]
    assert container.entrypoint == ["httpd", "-f"]
    assert container.args == ["-p", "80"]
    assert container.dockerfile == (str(tmp_path / "images" / "web"), "Dockerfile", {"VERSION": "1"})
    assert container.endpoints["http"].target_port == 80
    assert container.runs_in_container is True


def test_container_endpoint_needs_target_port(stack):
    with pytest.raises(ConfigurationError, match="target_port"):
        stack.add_container("web", "busybox").with_http_endpoint(port=8081)


def test_container_mount_targets_must_be_absolute(stack):
    container = stack.add_container("web", "busybox")

    with pytest.raises(ConfigurationError, match="absolute"):
        container.with_bind_mount("/tmp", "relative")
    with pytest.raises(ConfigurationError, match="absolute"):
        container.with_volume("data", "relative")


def test_stack_collector_and_runtime_kept(tmp_path):
    collector = SimpleNamespace(endpoints={"grpc": "http://127.0.0.1:9317"}, api_key=None)
    stack = Stack("c", state_dir=tmp_path, collector=collector, runtime="local")

    assert stack.collector is collector
    assert stack.runtime == "local"


def test_otlp_exporter_grpc_against_collector(tmp_path):
    collector = SimpleNamespace(
        endpoints={"grpc": "http://127.0.0.1:9317", "http": "http://127.0.0.1:9318"}, api_key="k3y")
    stack = Stack("c", state_dir=tmp_path, collector=collector)
    env = stack.add_uvicorn_app("api", "m:app").with_otlp_exporter().environment

    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].value == "http://127.0.0.1:9317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTEL_SERVICE_NAME"] == "api"
    assert env["OTEL_RESOURCE_ATTRIBUTES"].value.startswith("service.instance.id=")
    assert env["OTEL_BSP_SCHEDULE_DELAY"] == "1000"
    assert env["OTEL_BLRP_SCHEDULE_DELAY"] == "1000"
    assert env["OTEL_METRIC_EXPORT_INTERVAL"] == "1000"
    assert env["OTEL_TRACES_SAMPLER"] == "always_on"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"].reveal() == "x-otlp-api-key=k3y"
    assert "k3y" not in repr(env["OTEL_EXPORTER_OTLP_HEADERS"])


def test_otlp_exporter_http_protocol_pairs_with_http_port(tmp_path):
    collector = SimpleNamespace(endpoints={"grpc": "http://127.0.0.1:9317", "http": "http://127.0.0.1:9318"},
                                api_key=None)
    stack = Stack("c", state_dir=tmp_path, collector=collector)
    env = stack.add_python_app("worker", "w.py").with_otlp_exporter("http/protobuf").environment

    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].value == "http://127.0.0.1:9318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in env


def test_otlp_exporter_defaults_without_collector(stack):
    env = stack.add_python_app("worker", "w.py").with_otlp_exporter().environment

    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].value == "http://127.0.0.1:4317"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].resolve(ResolveContext(side="container")) == \
        "http://host.docker.internal:4317"


def test_otlp_exporter_rejects_unknown_protocol(stack):
    with pytest.raises(ConfigurationError, match="http/protobuf"):
        stack.add_python_app("worker", "w.py").with_otlp_exporter("http/json")


def test_unknown_endpoint_lists_declared(stack):
    app = stack.add_uvicorn_app("api", "m:app")

    with pytest.raises(ConfigurationError, match="declared: `http`"):
        app.endpoint("grpc")


def test_stack_lookup_by_name(stack, topology):
    assert stack["homunculy-app"] is topology.app
    with pytest.raises(ConfigurationError, match="no resource `nope`"):
        stack.resource("nope")
