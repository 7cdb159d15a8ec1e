"""The app model: a `Stack` and the resources declared on it.

This module only records what was declared. Nothing here starts a process: `Stack.up()` hands the model
to `homunculy_nb.orchestrator`, which allocates ports, resolves expressions and drives the runtimes.
Builders return the resource so declarations chain:

    server = stack.add_postgres("db", password=password).with_data_volume()
    app = stack.add_uvicorn_app("api", "api.main:app").with_reference(server.add_database("app"))
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.expressions import (
    DOCKER_HOST_GATEWAY,
    CallableExpression,
    EndpointProperty,
    EndpointReference,
    Expression,
    Part,
    ReferenceExpression,
    ResolveContext,
    to_part,
)
from homunculy_nb.health import CallableHealthCheck, HealthCheck, HttpHealthCheck, TcpHealthCheck, check_for
from homunculy_nb.parameters import Parameter, Secret, env_name

if TYPE_CHECKING:
    import pandas as pd

    from homunculy_nb.orchestrator import Orchestrator

KINDS = ("parameter", "postgres", "database", "migrations", "executable", "python_app", "uvicorn_app",
         "container")
RUNTIMES = ("auto", "local", "docker")
OTLP_PROTOCOLS = {"grpc": 4317, "http/protobuf": 4318}
# Export delays for development, in milliseconds, so telemetry shows up within about a second.
OTLP_DEVELOPMENT_DELAY_MS = "1000"

_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_STACK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        raise ConfigurationError(
            f"Invalid {what} name {name!r}: start with a letter and use letters, digits, `-` and `_`."
        )
    return name


def default_state_dir(stack_name: str) -> Path:
    """Return `$XDG_STATE_HOME/homunculy-nb/<stack>`, by default under `~/.local/state`."""
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "homunculy-nb" / stack_name


# -- endpoints, waits ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocatedEndpoint:
    """The address an endpoint got at launch."""

    host: str
    port: int


class Endpoint:
    """A network endpoint a resource serves: the requested host port and, once launched, the allocated one."""

    def __init__(self, resource: Resource, name: str, port: int | None, target_port: int | None,
                 scheme: str, is_external: bool) -> None:
        for value, what in ((port, "port"), (target_port, "target_port")):
            if value is not None and (not isinstance(value, int) or not 0 < value < 65536):
                raise ConfigurationError(
                    f"Invalid {what} {value!r} for endpoint `{name}` of `{resource.name}`: use 1-65535, "
                    "or None to allocate a free port."
                )
        self.resource = resource
        self.name = name
        self.port = port
        self.target_port = target_port
        self.scheme = scheme
        self.is_external = is_external
        self.allocated: AllocatedEndpoint | None = None

    def __repr__(self) -> str:
        where = f"{self.allocated.host}:{self.allocated.port}" if self.allocated else f"port={self.port}"
        return f"Endpoint({self.resource.name}.{self.name}, {self.scheme}, {where})"


class Wait(tuple):
    """A wait on another resource: `(resource, "healthy" | "completed")`, plus `.exit_code` for completion."""

    def __new__(cls, resource: Resource, condition: str, exit_code: int = 0) -> Wait:
        wait = super().__new__(cls, (resource, condition))
        wait.exit_code = exit_code
        return wait

    @property
    def resource(self) -> Resource:
        return self[0]

    @property
    def condition(self) -> str:
        return self[1]


# -- resources ----------------------------------------------------------------------------------


class Resource:
    """Something the stack runs. Subclasses add the declarations of their kind."""

    kind = ""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = _check_name(name, "resource")
        self.environment: dict[str, Part] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.health_checks: list[HealthCheck] = []
        self.waits: list[Wait] = []
        self.explicit_start = False
        self.parent: Resource | None = None
        self.args: list[Part] = []
        self.references: list[Resource] = []
        self.runtime: str | None = None
        self.otlp_protocol: str | None = None
        # Sent as service.instance.id; the orchestrator renews it at each launch.
        self.instance_id = uuid.uuid4().hex[:12]

    # -- declarations shared by every kind

    def with_environment(self, key: str, value: Any) -> Resource:
        """Set an environment variable: a string, number, parameter, secret or expression."""
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise ConfigurationError(f"Invalid environment variable name {key!r} for `{self.name}`.")
        self.environment[key] = to_part(value)
        return self

    def with_args(self, *args: Any) -> Resource:
        """Append command-line arguments; each may be a string, number, parameter or expression."""
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        self.args.extend(to_part(arg) for arg in args)
        return self

    def with_endpoint(self, name: str, port: int | None = None, target_port: int | None = None,
                      scheme: str = "tcp", external: bool = False) -> Resource:
        """Declare an endpoint; a None port is allocated from the free ports at launch."""
        _check_name(name, "endpoint")
        if name in self.endpoints:
            raise ConfigurationError(f"`{self.name}` already has an endpoint named `{name}`.")
        self.endpoints[name] = Endpoint(self, name, port, target_port, scheme, external)
        return self

    def with_http_endpoint(self, port: int | None = None, target_port: int | None = None,
                           name: str = "http", external: bool = False) -> Resource:
        """Declare an HTTP endpoint; a None port is allocated from the free ports at launch."""
        return self.with_endpoint(name, port, target_port, "http", external)

    def endpoint(self, name: str = "http") -> EndpointReference:
        """Return a reference to endpoint `name`, resolved once the stack is launched."""
        if name not in self.endpoints:
            declared = ", ".join(f"`{n}`" for n in self.endpoints) or "none"
            raise ConfigurationError(
                f"`{self.name}` has no endpoint named `{name}` (declared: {declared}). "
                "Declare it with with_http_endpoint(name=...)."
            )
        return EndpointReference(self.endpoints[name])

    def url(self, endpoint: str = "http") -> str:
        """Return the URL of `endpoint` once the stack is up."""
        return self.endpoint(endpoint).url.reveal()

    def websocket_url(self, path: str = "/", endpoint: str = "http") -> str:
        """Return the `ws://` URL of `path` on `endpoint` once the stack is up."""
        base = self.endpoint(endpoint).host_and_port.reveal()
        scheme = "wss" if self.endpoints[endpoint].scheme == "https" else "ws"
        return f"{scheme}://{base}/{path.lstrip('/')}"

    def with_reference(self, resource: Resource | Parameter) -> Resource:
        """Inject the variables the orchestration ecosystem uses to find `resource`.

        A database or server gets `ConnectionStrings__<name>` and `<NAME>_HOST`, `_PORT`, `_USERNAME`,
        `_PASSWORD`, `_URI`, `_DATABASENAME`; a resource with endpoints gets
        `services__<name>__<endpoint>__0` and `<NAME>_<ENDPOINT>` per endpoint; a parameter gets `<NAME>`.
        """
        if isinstance(resource, Parameter):
            self.environment[env_name(resource.name)] = resource
            return self
        if not isinstance(resource, Resource):
            raise ConfigurationError(f"`{self.name}` cannot reference {resource!r}: pass a resource or parameter.")
        if resource is self:
            raise ConfigurationError(f"`{self.name}` cannot reference itself.")

        self.references.append(resource)
        self.environment.update(resource.reference_environment())
        return self

    def reference_environment(self) -> dict[str, Part]:
        """Return the variables `with_reference(self)` injects into a consumer."""
        prefix = env_name(self.name)
        variables: dict[str, Part] = {}
        for endpoint in self.endpoints.values():
            url = EndpointProperty(endpoint, "url")
            variables[f"services__{self.name}__{endpoint.name}__0"] = url
            variables[f"{prefix}_{env_name(endpoint.name)}"] = url
        if not variables:
            raise ConfigurationError(
                f"`{self.name}` has no endpoints, so a reference to it injects nothing. "
                "Declare an endpoint first, or use wait_for() to order the start."
            )
        return variables

    def with_http_health_check(self, path: str = "/health", endpoint: str = "http") -> Resource:
        """Declare that the resource is healthy when GET `path` returns a status below 400."""
        if not path.startswith("/"):
            raise ConfigurationError(f"Health check path {path!r} of `{self.name}` must start with `/`.")
        self.health_checks.append(HttpHealthCheck(path, endpoint))
        return self

    def with_tcp_health_check(self, endpoint: str | None = None) -> Resource:
        """Declare that the resource is healthy when its endpoint accepts TCP connections."""
        self.health_checks.append(TcpHealthCheck(endpoint))
        return self

    def with_health_check(self, check: Callable[[], Any] | HealthCheck, name: str = "") -> Resource:
        """Declare a health check: a check object, or a callable (sync or async) returning true when healthy."""
        check = check_for(check)
        if name and isinstance(check, CallableHealthCheck):
            check = CallableHealthCheck(check.function, name)
        self.health_checks.append(check)
        return self

    def wait_for(self, resource: Resource) -> Resource:
        """Start only after `resource` is healthy (or running, when it has no health check)."""
        return self._add_wait(resource, "healthy", 0)

    def wait_for_completion(self, resource: Resource, exit_code: int = 0) -> Resource:
        """Start only after `resource` has exited with `exit_code`."""
        return self._add_wait(resource, "completed", exit_code)

    def _add_wait(self, resource: Resource, condition: str, exit_code: int) -> Resource:
        if not isinstance(resource, Resource):
            raise ConfigurationError(f"`{self.name}` can only wait for a resource, not {resource!r}.")
        if resource is self:
            raise ConfigurationError(f"`{self.name}` cannot wait for itself.")
        if resource.stack is not self.stack:
            raise ConfigurationError(f"`{self.name}` cannot wait for `{resource.name}` of another stack.")
        self.waits.append(Wait(resource, condition, exit_code))
        return self

    def with_explicit_start(self) -> Resource:
        """Leave the resource out of `up()`; start it with `stack.start(name)`."""
        self.explicit_start = True
        return self

    def with_otlp_exporter(self, protocol: str = "grpc") -> Resource:
        """Point the resource's OpenTelemetry SDK at the stack's collector.

        Sets `OTEL_EXPORTER_OTLP_ENDPOINT` and `OTEL_EXPORTER_OTLP_PROTOCOL` as a matching pair (the
        collector's gRPC or HTTP port; 4317 or 4318 on 127.0.0.1 when the stack has no collector),
        `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` with `service.instance.id`, export delays of 1 s,
        `OTEL_TRACES_SAMPLER=always_on`, and `OTEL_EXPORTER_OTLP_HEADERS` with the collector's API key
        when it has one.
        """
        if protocol not in OTLP_PROTOCOLS:
            raise ConfigurationError(
                f"Invalid OTLP protocol {protocol!r} for `{self.name}`: use \"grpc\" or \"http/protobuf\"."
            )
        self.otlp_protocol = protocol
        stack = self.stack

        def endpoint(context: ResolveContext) -> str:
            url = _collector_url(stack, protocol)
            if context.side != "host":
                url = url.replace("127.0.0.1", DOCKER_HOST_GATEWAY).replace("localhost", DOCKER_HOST_GATEWAY)
            return url

        self.environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = CallableExpression(
            endpoint, f"stack collector {protocol} endpoint")
        self.environment["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
        self.environment["OTEL_SERVICE_NAME"] = self.name
        self.environment["OTEL_RESOURCE_ATTRIBUTES"] = CallableExpression(
            lambda context: f"service.instance.id={self.instance_id}", "service.instance.id=<launch id>")
        self.environment["OTEL_BSP_SCHEDULE_DELAY"] = OTLP_DEVELOPMENT_DELAY_MS
        self.environment["OTEL_BLRP_SCHEDULE_DELAY"] = OTLP_DEVELOPMENT_DELAY_MS
        self.environment["OTEL_METRIC_EXPORT_INTERVAL"] = OTLP_DEVELOPMENT_DELAY_MS
        self.environment["OTEL_TRACES_SAMPLER"] = "always_on"

        api_key = getattr(stack.collector, "api_key", None)
        if api_key:
            self.environment["OTEL_EXPORTER_OTLP_HEADERS"] = Secret(f"x-otlp-api-key={_reveal(api_key)}")
        return self

    # -- introspection

    @property
    def runs_in_container(self) -> bool:
        """Whether the resource runs in a Docker container (its address differs by consumer side)."""
        return False

    def dependencies(self) -> list[Resource]:
        """Return the resources this one waits for, in declaration order."""
        return [wait.resource for wait in self.waits]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} kind={self.kind}>"


def _reveal(value: Any) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)


def _collector_url(stack: Stack, protocol: str) -> str:
    key = "grpc" if protocol == "grpc" else "http"
    endpoints = getattr(stack.collector, "endpoints", None) or {}
    if key in endpoints:
        return str(endpoints[key])
    return f"http://127.0.0.1:{OTLP_PROTOCOLS[protocol]}"


class PostgresServer(Resource):
    """A PostgreSQL server: the machine's binaries (local runtime) or the official image (Docker)."""

    kind = "postgres"
    DEFAULT_USER = "postgres"

    def __init__(self, stack: Stack, name: str, port: int | None, password: Parameter, user: str,
                 runtime: str | None, image: str, tag: str) -> None:
        super().__init__(stack, name)
        self.user = user
        self.password = password
        self.databases: dict[str, Database] = {}
        self.data_volume: str | None = None
        self.runtime = runtime
        self.image = image
        self.tag = tag
        self.with_endpoint("tcp", port=port, target_port=5432, scheme="tcp")

    @property
    def host(self) -> EndpointProperty:
        """The server's host name for the consumer."""
        return EndpointProperty(self.endpoints["tcp"], "host")

    @property
    def port(self) -> EndpointProperty:
        """The server's port for the consumer."""
        return EndpointProperty(self.endpoints["tcp"], "port")

    @property
    def persistent(self) -> bool:
        """Whether the data directory is kept across `down()`/`up()`."""
        return self.data_volume is not None

    @property
    def runs_in_container(self) -> bool:
        return self.stack.runtime_for(self) == "docker"

    def add_database(self, name: str, database_name: str | None = None) -> Database:
        """Declare a database on this server, created at start when missing."""
        database = Database(self.stack, name, self, database_name or name)
        self.stack._add(database)
        self.databases[name] = database
        return database

    def with_data_volume(self, name: str | None = None) -> PostgresServer:
        """Keep the data directory across `down()`/`up()` (a named volume on Docker)."""
        if name is not None:
            _check_name(name, "volume")
        self.data_volume = name or f"{self.name}-data"
        return self

    def with_pgadmin(self, port: int | None = 5050, runtime: str | None = None) -> PostgresServer:
        """Add the explicit-start `pgadmin` resource, which lists every PostgreSQL server of the stack."""
        from homunculy_nb.pgadmin import add_pgadmin

        add_pgadmin(self.stack, port=port, runtime=runtime)
        return self

    def connection_string(self, database: str = "postgres") -> ReferenceExpression:
        """Return a `postgresql://` URI for `database` on this server."""
        return ReferenceExpression(
            "postgresql://{}:{}@{}/{}", self.user, self.password,
            EndpointProperty(self.endpoints["tcp"], "host_and_port"), database, quote=True,
        )

    def reference_environment(self) -> dict[str, Part]:
        return _postgres_variables(self.name, self, "postgres")


class Database(Resource):
    """A database on a PostgreSQL server; it is ready when its server is healthy."""

    kind = "database"

    def __init__(self, stack: Stack, name: str, server: PostgresServer, database_name: str) -> None:
        super().__init__(stack, name)
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", database_name):
            raise ConfigurationError(f"Invalid database name {database_name!r} for `{name}`.")
        self.parent = server
        self.server = server
        self.database_name = database_name

    @property
    def host(self) -> EndpointProperty:
        return self.server.host

    @property
    def port(self) -> EndpointProperty:
        return self.server.port

    @property
    def connection_string(self) -> ReferenceExpression:
        """The `postgresql://user:password@host:port/database` URI; it resolves to a `Secret`."""
        return self.server.connection_string(self.database_name)

    @property
    def uri(self) -> ReferenceExpression:
        """Same as `connection_string`."""
        return self.connection_string

    @property
    def runs_in_container(self) -> bool:
        return self.server.runs_in_container

    def reference_environment(self) -> dict[str, Part]:
        return _postgres_variables(self.name, self.server, self.database_name)


def _postgres_variables(name: str, server: PostgresServer, database_name: str) -> dict[str, Part]:
    prefix = env_name(name)
    uri = server.connection_string(database_name)
    return {
        f"ConnectionStrings__{name}": uri,
        f"{prefix}_HOST": server.host,
        f"{prefix}_PORT": server.port,
        f"{prefix}_USERNAME": server.user,
        f"{prefix}_PASSWORD": server.password,
        f"{prefix}_URI": uri,
        f"{prefix}_DATABASENAME": database_name,
    }


class Migrations(Resource):
    """A changelog applied to a database by `python -m homunculy_nb.migrations`; it finishes when done."""

    kind = "migrations"

    def __init__(self, stack: Stack, name: str, changelog: Path, database: Database) -> None:
        super().__init__(stack, name)
        self.changelog = changelog
        self.database = database
        self.parent = database
        self.environment["DATABASE_URI"] = database.connection_string
        self.wait_for(database.server)

    @property
    def command(self) -> list[str]:
        """The command the orchestrator runs, before `args`."""
        return [sys.executable, "-m", "homunculy_nb.migrations", str(self.changelog)]


class Executable(Resource):
    """Any program, started with `command` and `args` in `cwd`."""

    kind = "executable"

    def __init__(self, stack: Stack, name: str, command: str, args: Iterable[Any], cwd: Path | None) -> None:
        super().__init__(stack, name)
        self.command = command
        self.cwd = cwd
        self.with_args(*args)


class PythonApp(Resource):
    """A Python script (a path ending in `.py`) or module (`-m`), run with the current interpreter."""

    kind = "python_app"

    def __init__(self, stack: Stack, name: str, script_or_module: str, args: Iterable[Any],
                 cwd: Path | None) -> None:
        super().__init__(stack, name)
        self.script_or_module = str(script_or_module)
        self.cwd = cwd
        self.with_args(*args)

        if self.script_or_module.endswith(".py") or os.sep in self.script_or_module:
            script = Path(self.script_or_module)
            if not script.is_absolute():
                script = (cwd or stack.source_dir) / script
            self.script: Path | None = script
            self.module: str | None = None
        else:
            self.script = None
            self.module = self.script_or_module


class UvicornApp(Resource):
    """An ASGI app served by uvicorn on its `http` endpoint (`--port` and `PORT` set to the port)."""

    kind = "uvicorn_app"

    def __init__(self, stack: Stack, name: str, app: str, port: int | None, cwd: Path | None,
                 args: Iterable[Any]) -> None:
        super().__init__(stack, name)
        module, _, attribute = app.partition(":")
        if not module or not attribute:
            raise ConfigurationError(f"Invalid ASGI app {app!r} for `{name}`: use \"module:attribute\".")
        self.app = app
        self.cwd = cwd
        self.with_http_endpoint(port=port)
        self.with_args(*args)
        self.environment["PORT"] = EndpointProperty(self.endpoints["http"], "port")

    @property
    def python(self) -> str:
        """The interpreter: the app's own `.venv` (in `cwd`) when it has one, else the current one."""
        directory = self.cwd or self.stack.source_dir
        candidate = Path(directory) / ".venv" / "bin" / "python"
        return str(candidate) if candidate.exists() else sys.executable


class ContainerResource(Resource):
    """A container image; the Docker runtime runs it."""

    kind = "container"

    def __init__(self, stack: Stack, name: str, image: str, tag: str | None) -> None:
        super().__init__(stack, name)
        if not image or not isinstance(image, str):
            raise ConfigurationError(f"Invalid image {image!r} for `{name}`.")
        self.image = image
        self.tag = tag
        self.bind_mounts: list[tuple[str, str, bool]] = []
        self.volumes: list[tuple[str, str]] = []
        self.entrypoint: list[str] | None = None
        self.dockerfile: tuple[str, str, dict[str, str]] | None = None
        self.runtime = "docker"

    @property
    def runs_in_container(self) -> bool:
        return True

    def with_endpoint(self, name: str, port: int | None = None, target_port: int | None = None,
                      scheme: str = "tcp", external: bool = False) -> ContainerResource:
        if target_port is None:
            raise ConfigurationError(
                f"Endpoint `{name}` of container `{self.name}` needs target_port=, the port the "
                "container listens on."
            )
        return super().with_endpoint(name, port, target_port, scheme, external)

    def with_bind_mount(self, source: str | os.PathLike, target: str, read_only: bool = False) -> ContainerResource:
        """Mount host path `source` at `target` in the container; a relative source is beside the stack file."""
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = self.stack.source_dir / path
        if not str(target).startswith("/"):
            raise ConfigurationError(f"Bind mount target {target!r} of `{self.name}` must be an absolute path.")
        self.bind_mounts.append((str(path), str(target), bool(read_only)))
        return self

    def with_volume(self, name: str, target: str) -> ContainerResource:
        """Mount named volume `name` at `target`; `down()` keeps it unless `down(volumes=True)`."""
        _check_name(name, "volume")
        if not str(target).startswith("/"):
            raise ConfigurationError(f"Volume target {target!r} of `{self.name}` must be an absolute path.")
        self.volumes.append((name, str(target)))
        return self

    def with_entrypoint(self, *entrypoint: str) -> ContainerResource:
        """Replace the image's entrypoint."""
        if len(entrypoint) == 1 and isinstance(entrypoint[0], (list, tuple)):
            entrypoint = tuple(entrypoint[0])
        if not entrypoint:
            raise ConfigurationError(f"with_entrypoint() of `{self.name}` needs at least one argument.")
        self.entrypoint = [str(part) for part in entrypoint]
        return self

    def with_dockerfile(self, context: str | os.PathLike, dockerfile: str = "Dockerfile",
                        build_args: dict[str, str] | None = None) -> ContainerResource:
        """Build the image from `context` before start; a relative context is beside the stack file."""
        path = Path(context).expanduser()
        if not path.is_absolute():
            path = self.stack.source_dir / path
        self.dockerfile = (str(path), dockerfile, dict(build_args or {}))
        return self


# -- the stack ----------------------------------------------------------------------------------


class Stack:
    """A named set of resources declared in code and launched together.

    `state_dir` holds the state file, console logs and persistent data directories; by default
    `~/.local/state/homunculy-nb/<name>`. `runtime` is "auto" (Docker for containers, local processes
    for the rest), "local" or "docker" (PostgreSQL servers in containers too).
    """

    def __init__(self, name: str, state_dir: str | os.PathLike | None = None, collector: Any = None,
                 runtime: str = "auto", *, source_dir: str | os.PathLike | None = None) -> None:
        if not isinstance(name, str) or not _STACK_NAME_PATTERN.match(name):
            raise ConfigurationError(
                f"Invalid stack name {name!r}: use letters, digits, `-`, `_` and `.`, starting with a letter or digit."
            )
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"Invalid runtime {runtime!r}: use \"auto\", \"local\" or \"docker\".")

        self.name = name
        self.state_dir = Path(state_dir).expanduser().resolve() if state_dir else default_state_dir(name)
        self.collector = collector
        self.runtime = runtime
        self.source_dir = Path(source_dir).resolve() if source_dir else _caller_dir()
        self.resources: dict[str, Resource] = {}
        self.parameters: dict[str, Parameter] = {}
        self._orchestrator: Orchestrator | None = None

    def _add(self, resource: Resource) -> None:
        if resource.name in self.resources or resource.name in self.parameters:
            raise ConfigurationError(f"Stack `{self.name}` already has a resource named `{resource.name}`.")
        self.resources[resource.name] = resource

    def runtime_for(self, resource: Resource) -> str:
        """Return "local" or "docker": where `resource` runs under this stack's runtime setting."""
        if resource.kind == "container":
            return "docker"
        if resource.kind == "database" and resource.parent is not None:
            return self.runtime_for(resource.parent)
        if resource.runtime in ("local", "docker"):
            return resource.runtime
        if resource.kind == "postgres" and self.runtime == "docker":
            return "docker"
        return "local"

    # -- builders

    def add_parameter(self, name: str, secret: bool = False, default: str | None = None,
                      generate: bool = False, *, value: str | None = None) -> Parameter:
        """Declare a parameter; see `homunculy_nb.parameters` for where its value comes from."""
        if name in self.parameters or name in self.resources:
            raise ConfigurationError(f"Stack `{self.name}` already has a parameter or resource named `{name}`.")
        parameter = Parameter(self, name, secret=secret, default=default, generate=generate, value=value)
        self.parameters[name] = parameter
        return parameter

    def add_postgres(self, name: str, port: int | None = None, password: Parameter | None = None,
                     user: str = PostgresServer.DEFAULT_USER, *, runtime: str | None = None,
                     image: str = "postgres", tag: str = "16") -> PostgresServer:
        """Declare a PostgreSQL server; without `password` a generated secret `<name>-password` is used.

        `runtime` is "local" (the machine's binaries), "docker" (image `image:tag`) or None for the
        stack's default.
        """
        if runtime not in (None, "local", "docker"):
            raise ConfigurationError(f"Invalid runtime {runtime!r} for `{name}`: use \"local\" or \"docker\".")
        if password is None:
            password = self.add_parameter(f"{name}-password", secret=True, generate=True)
        elif not isinstance(password, Parameter):
            raise ConfigurationError(
                f"The password of `{name}` must be a parameter: stack.add_parameter(\"{name}-password\", secret=True)."
            )
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", user):
            raise ConfigurationError(f"Invalid PostgreSQL user name {user!r} for `{name}`.")

        server = PostgresServer(self, name, port, password, user, runtime, image, tag)
        self._add(server)
        return server

    def add_migrations(self, name: str, changelog: str | os.PathLike, database: Database) -> Migrations:
        """Declare a changelog applied to `database` after its server is healthy; it finishes when done."""
        if not isinstance(database, Database):
            raise ConfigurationError(
                f"Migrations `{name}` need a database from server.add_database(...), not {database!r}."
            )
        path = Path(changelog).expanduser()
        if not path.is_absolute():
            path = self.source_dir / path
        migrations = Migrations(self, name, path, database)
        self._add(migrations)
        return migrations

    def add_executable(self, name: str, command: str, args: Iterable[Any] = (),
                       cwd: str | os.PathLike | None = None) -> Executable:
        """Declare a program started with `command` and `args`."""
        executable = Executable(self, name, command, args, self._cwd(cwd))
        self._add(executable)
        return executable

    def add_python_app(self, name: str, script_or_module: str, args: Iterable[Any] = (),
                       cwd: str | os.PathLike | None = None) -> PythonApp:
        """Declare a Python script (`path.py`) or module run with the current interpreter."""
        app = PythonApp(self, name, script_or_module, args, self._cwd(cwd))
        self._add(app)
        return app

    def add_uvicorn_app(self, name: str, app: str, port: int | None = None,
                        cwd: str | os.PathLike | None = None, args: Iterable[Any] = ()) -> UvicornApp:
        """Declare an ASGI app ("module:app") served by uvicorn; a None port is allocated at launch."""
        resource = UvicornApp(self, name, app, port, self._cwd(cwd), args)
        self._add(resource)
        return resource

    def add_container(self, name: str, image: str, tag: str | None = None) -> ContainerResource:
        """Declare a container from `image:tag`; the Docker runtime runs it."""
        container = ContainerResource(self, name, image, tag)
        self._add(container)
        return container

    def _cwd(self, cwd: str | os.PathLike | None) -> Path | None:
        if cwd is None:
            return None
        path = Path(cwd).expanduser()
        return path if path.is_absolute() else self.source_dir / path

    def resource(self, name: str) -> Resource:
        """Return the resource called `name`."""
        try:
            return self.resources[name]
        except KeyError:
            declared = ", ".join(f"`{n}`" for n in self.resources) or "none"
            raise ConfigurationError(f"Stack `{self.name}` has no resource `{name}` (declared: {declared}).") from None

    __getitem__ = resource

    # -- running (delegated to the orchestrator)

    @property
    def orchestrator(self) -> Orchestrator:
        """The engine that runs this stack, created on first use."""
        if self._orchestrator is None:
            from homunculy_nb.orchestrator import Orchestrator

            self._orchestrator = Orchestrator(self)
        return self._orchestrator

    def up(self, wait: bool = True, timeout: float | None = 120.0, progress: bool | None = None) -> Stack:
        """Start every resource without explicit start, in dependency order; see `Orchestrator.up`."""
        self.orchestrator.up(wait=wait, timeout=timeout, progress=progress)
        return self

    async def up_async(self, wait: bool = True, timeout: float | None = 120.0, progress: bool | None = False) -> Stack:
        await self.orchestrator.up_async(wait=wait, timeout=timeout, progress=progress)
        return self

    def down(self, volumes: bool = False, timeout: float = 10.0) -> None:
        """Stop every resource; `volumes=True` also deletes persistent data directories and volumes."""
        self.orchestrator.down(volumes=volumes, timeout=timeout)

    async def down_async(self, volumes: bool = False, timeout: float = 10.0) -> None:
        await self.orchestrator.down_async(volumes=volumes, timeout=timeout)

    def start(self, name: str, timeout: float | None = 120.0) -> None:
        """Start one resource (and wait for what it waits on)."""
        self.orchestrator.start(name, timeout=timeout)

    async def start_async(self, name: str, timeout: float | None = 120.0) -> None:
        await self.orchestrator.start_async(name, timeout=timeout)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop one resource."""
        self.orchestrator.stop(name, timeout=timeout)

    async def stop_async(self, name: str, timeout: float = 10.0) -> None:
        await self.orchestrator.stop_async(name, timeout=timeout)

    def restart(self, name: str, timeout: float | None = 120.0) -> None:
        """Stop one resource, wait until its ports are free, and start it again."""
        self.orchestrator.restart(name, timeout=timeout)

    async def restart_async(self, name: str, timeout: float | None = 120.0) -> None:
        await self.orchestrator.restart_async(name, timeout=timeout)

    def status(self) -> pd.DataFrame:
        """Return one row per resource: name, type, state, health, endpoints, pid, started_at, ..."""
        return self.orchestrator.status()

    def logs(self, name: str | None = None, tail: int | None = None) -> pd.DataFrame:
        """Return console output: time, resource, stream, line, plus fields of JSON lines."""
        return self.orchestrator.logs(name, tail)

    def events(self) -> pd.DataFrame:
        """Return the state changes so far: time, resource, state, previous, message."""
        return self.orchestrator.events()

    def on_event(self, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(event)` on each state change; returns a function that unsubscribes."""
        return self.orchestrator.on_event(callback)

    def on_log(self, callback: Callable[[Any, str, str, str], None]) -> Callable[[], None]:
        """Call `callback(time, resource, stream, line)` on each console line; returns an unsubscriber."""
        return self.orchestrator.on_log(callback)

    def publish(self, target: str, out_dir: str | os.PathLike) -> list[Path]:
        """Write deployable files for `target` ("compose" or "kubernetes") into `out_dir`; no secret value is written."""
        from homunculy_nb.publish import publish

        return publish(self, target, out_dir)

    def __repr__(self) -> str:
        return f"<Stack {self.name!r} resources={list(self.resources)}>"


def _caller_dir() -> Path:
    """Return the directory of the file that created the stack, or the working directory in a notebook."""
    filename = sys._getframe(2).f_globals.get("__file__")
    return Path(filename).resolve().parent if filename else Path.cwd()
