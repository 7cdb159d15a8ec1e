"""The deployment plan both writers share: which resource becomes which service, with what image,
command, environment, health check and dependencies.

Every value is resolved on the "manifest" side: resources are reached by service name and target port,
and a parameter becomes a placeholder the writer chooses (`${NAME}` in Compose, `$(NAME)` in Kubernetes).
A `Secret` that is not a parameter (say an API key header) becomes a placeholder named after its variable,
so no secret value reaches a published file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.expressions import ResolveContext, resolve_part
from homunculy_nb.health import CallableHealthCheck, HttpHealthCheck, TcpHealthCheck
from homunculy_nb.parameters import Parameter, Secret, env_name

logger = logging.getLogger(__name__)

PYTHON_IMAGE = "python:3.11-slim"
POSTGRES_DATA = "/var/lib/postgresql/data"
APP_DIRECTORY = "/app"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
DOCKERIGNORE = ".git\n.venv\n**/__pycache__\n**/*.pyc\n**/node_modules\n**/.pytest_cache\n"
# Container port of an HTTP endpoint declared with neither a port nor a target port.
DEFAULT_HTTP_PORT = 8000
SERVICES_PACKAGE = "homunculy_nb.services"

# Placeholders are spliced in after escaping, so a `$` in a literal value cannot start a variable.
_TOKEN = "\x00{}\x00"
_TOKEN_PATTERN = re.compile("\x00([A-Za-z0-9_]+)\x00")
# A PostgreSQL URI whose password is exactly one placeholder: (scheme and user, placeholder, its name).
_URI_PASSWORD = re.compile("^(postgres(?:ql)?://[^:/@]*):(\x00([A-Za-z0-9_]+)\x00)@")


@dataclass
class Variable:
    """A value the deployer supplies at deploy time: a parameter or an unparameterised secret."""

    name: str
    secret: bool
    default: str | None = None
    description: str = ""


@dataclass
class Value:
    """An environment value: literal text with `{VARIABLE}` tokens where deploy-time variables go."""

    text: str
    variables: list[str] = field(default_factory=list)

    def render(self, escape: Callable[[str], str], placeholder: Callable[[str], str]) -> str:
        """Escape the literal parts with `escape` and put `placeholder(name)` where each variable goes."""
        pieces = _TOKEN_PATTERN.split(self.text)
        out = []
        for index, piece in enumerate(pieces):
            out.append(placeholder(piece) if index % 2 else escape(piece))
        return "".join(out)


@dataclass
class HealthTest:
    """A health check in a form both writers translate: an HTTP GET, a TCP connect, or a command."""

    kind: str  # "http", "tcp" or "command"
    port: int | None = None
    path: str = "/"
    command: list[str] | None = None


@dataclass
class Service:
    """One deployable unit: a server, an app, a container, or a one-shot migration."""

    name: str
    resource: Any
    kind: str
    image: str
    # (context relative to the output folder, Dockerfile relative to the context)
    build: tuple[str, str] | None = None
    dockerfile_path: str | None = None  # the Dockerfile relative to the output folder
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    environment: dict[str, Value] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)  # endpoint -> container port
    external_ports: dict[str, tuple[int, int]] = field(default_factory=dict)  # endpoint -> (host, container)
    health: HealthTest | None = None
    depends_on: dict[str, str] = field(default_factory=dict)  # service -> "healthy" | "completed" | "started"
    volumes: list[tuple[str, str]] = field(default_factory=list)  # (volume, target)
    bind_mounts: list[tuple[str, str, bool]] = field(default_factory=list)  # absolute host sources
    one_shot: bool = False
    init_sql: str | None = None  # for PostgreSQL: SQL creating the extra databases
    reaches_host: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """Services in declaration order and the deploy-time variables they use."""

    stack_name: str
    services: dict[str, Service]
    variables: dict[str, Variable]
    dockerfiles: dict[str, str]  # path relative to the output folder -> content


def dns_name(name: str) -> str:
    """Return `name` as a DNS-1123 label: lower case letters, digits and `-`, at most 63 characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"r-{label}"
    return label[:63].rstrip("-")


def service_of(resource: Any) -> Any:
    """Return the resource that carries a service: a database's server, else the resource itself."""
    while resource.kind == "database" and resource.parent is not None:
        resource = resource.parent
    return resource


# ---------------------------------------------------------------------------------------------------------
# Environment


class _Resolver:
    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.variables: dict[str, Variable] = {}
        self.context = ResolveContext(side="manifest", parameter=self._parameter)

    def _parameter(self, parameter: Parameter) -> str:
        name = env_name(parameter.name)
        if name not in self.variables:
            default = None if parameter.secret or parameter.generate else parameter.default
            self.variables[name] = Variable(name, parameter.secret or parameter.generate, default,
                                            f"parameter `{parameter.name}`")
        return _TOKEN.format(name)

    def setting(self, name: str, default: str, description: str) -> Value | None:
        """Return a deploy-time setting `name` with `default`, or None when another default already took it."""
        variable = self.variables.setdefault(name, Variable(name, False, default, description))
        if variable.secret or variable.default != default:
            return None
        return Value(_TOKEN.format(name), [name])

    def value(self, key: str, part: Any) -> Value:
        resolved = resolve_part(part, self.context)
        if isinstance(resolved, Secret):
            # A secret that is not a parameter: the deployer supplies it under the variable's own name.
            name = env_name(key)
            self.variables.setdefault(name, Variable(name, True, None, f"secret value of {key}"))
            return Value(_TOKEN.format(name), [name])
        text = str(resolved)
        return Value(text, _TOKEN_PATTERN.findall(text))


@contextlib.contextmanager
def _container_ports(stack: Any) -> Iterator[None]:
    """Give every endpoint declared without ports a container port while the plan is made.

    A published file needs a fixed port where the local run allocates one at launch. The model is
    restored afterwards.
    """
    changed = []
    for resource in stack.resources.values():
        for endpoint in resource.endpoints.values():
            if endpoint.target_port is None and endpoint.port is None:
                changed.append(endpoint)
                endpoint.target_port = DEFAULT_HTTP_PORT
    try:
        yield
    finally:
        for endpoint in changed:
            endpoint.target_port = None


def container_port(endpoint: Any) -> int:
    return endpoint.target_port or endpoint.port or DEFAULT_HTTP_PORT


# ---------------------------------------------------------------------------------------------------------
# Python images


def _project_root(path: Path) -> Path:
    """Return the nearest folder above `path` with a pyproject.toml, else the folder of `path`."""
    start = path if path.is_dir() else path.parent
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file():
            return folder
    return start


def _module_path(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin)


def _extras(module: str | None) -> list[str]:
    """Return the extras of homunculy-nb that `module` needs beyond the package's base dependencies.

    The reference services import their OpenTelemetry instrumentation and MP3 encoder from the
    `services` extra, so an image without it fails at start-up.
    """
    if module and (module == SERVICES_PACKAGE or module.startswith(SERVICES_PACKAGE + ".")):
        return ["services"]
    return []


def _dockerfile(root: Path, extras: list[str] | None = None) -> str:
    target = f'".[{",".join(extras)}]"' if extras else "."
    install = (
        f"RUN pip install --no-cache-dir {target}"
        if (root / "pyproject.toml").is_file() or (root / "setup.py").is_file()
        else "RUN if [ -f requirements.txt ]; then pip install --no-cache-dir -r requirements.txt; fi"
    )
    return (
        "# Generated by homunculy-nb publish: the Python project the service runs.\n"
        f"FROM {PYTHON_IMAGE}\n"
        "ENV PYTHONUNBUFFERED=1\n"
        f"WORKDIR {APP_DIRECTORY}\n"
        f"COPY . {APP_DIRECTORY}\n"
        f"{install}\n"
    )


def _inside(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ConfigurationError(
            f"{path} is outside the project folder {root}, so the generated image cannot contain it. "
            "Move it into the project or declare the resource as a container with its own image."
        ) from None


# ---------------------------------------------------------------------------------------------------------
# The plan


def make_plan(stack: Any, out_dir: Path) -> Plan:
    """Translate the stack's resources into services; raises `ConfigurationError` for what cannot publish."""
    resolver = _Resolver(stack)
    services: dict[str, Service] = {}
    dockerfiles: dict[str, str] = {}

    with _container_ports(stack):
        for resource in stack.resources.values():
            if resource.kind in ("parameter", "database"):
                continue
            service = _service(stack, resource, resolver, out_dir, dockerfiles)
            services[service.name] = service

        for resource in stack.resources.values():
            if resource.kind in ("parameter", "database"):
                continue
            _add_dependencies(services[dns_name(resource.name)], resource, services)

    for parameter in stack.parameters.values():
        resolver._parameter(parameter)
    return Plan(stack.name, services, resolver.variables, dockerfiles)


def _service(stack: Any, resource: Any, resolver: _Resolver, out_dir: Path, dockerfiles: dict[str, str]) -> Service:
    name = dns_name(resource.name)
    service = Service(name=name, resource=resource, kind=resource.kind, image="")

    for key, part in resource.environment.items():
        service.environment[key] = resolver.value(key, part)
    args = [resolver.value("ARG", part) for part in resource.args]
    if any(arg.variables for arg in args):
        raise ConfigurationError(
            f"An argument of `{resource.name}` contains a parameter or secret, which a published command "
            "line would expose. Pass it through with_environment() instead."
        )
    arg_texts = [arg.text for arg in args]

    for endpoint in resource.endpoints.values():
        service.ports[endpoint.name] = container_port(endpoint)
        if endpoint.is_external:
            service.external_ports[endpoint.name] = (endpoint.port or container_port(endpoint), container_port(endpoint))

    for key, value in service.environment.items():
        # A service configured to listen on loopback would be unreachable from other containers.
        if key.upper().endswith("HOST") and value.text in LOOPBACK_NAMES:
            service.environment[key] = Value("0.0.0.0")

    if resource.kind == "postgres":
        _postgres_service(service, resource, resolver)
    elif resource.kind == "container":
        _container_service(service, resource, out_dir, arg_texts)
    else:
        _python_service(stack, service, resource, out_dir, dockerfiles, arg_texts)
        if "PYTHONPATH" in service.environment:
            # The generated image has the project in /app; a host path means nothing there.
            service.environment["PYTHONPATH"] = Value(APP_DIRECTORY)

    if resource.kind == "migrations":
        _password_outside_uri(service)

    service.health = _health(service, resource)
    service.reaches_host = any("host.docker.internal" in value.text for value in service.environment.values())
    _deployment_telemetry(service, resolver)
    return service


def _password_outside_uri(service: Service) -> None:
    """Move a deploy-time password out of the migrations' `DATABASE_URI` into `PGPASSWORD`.

    Compose and Kubernetes substitute a variable as it is, so a password with `@`, `:`, `/` or `#` would
    break the URI, while libpq (and so the migrations command) reads `PGPASSWORD` when the URI has none.
    """
    uri = service.environment.get("DATABASE_URI")
    if uri is None or "PGPASSWORD" in service.environment:
        return
    match = _URI_PASSWORD.match(uri.text)
    if match is None:
        return
    text = match.group(1) + "@" + uri.text[match.end():]
    service.environment["DATABASE_URI"] = Value(text, _TOKEN_PATTERN.findall(text))
    service.environment["PGPASSWORD"] = Value(match.group(2), [match.group(3)])


def _deployment_telemetry(service: Service, resolver: _Resolver) -> None:
    """Make the OTLP endpoint a deploy-time setting and drop the local run's `service.instance.id`.

    The endpoint resolved here is the publishing session's collector, whose port may be ephemeral. The
    instance id names one local launch, and every replica of a deployment would share it.
    """
    endpoint = service.environment.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint is not None and not endpoint.variables:
        setting = resolver.setting("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.text,
                                   "OTLP endpoint the services export telemetry to")
        if setting is not None:
            service.environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = setting

    attributes = service.environment.get("OTEL_RESOURCE_ATTRIBUTES")
    if attributes is not None and not attributes.variables:
        pairs = attributes.text.split(",")
        published = [pair for pair in pairs if pair and not pair.startswith("service.instance.id=")]
        service.environment["OTEL_RESOURCE_ATTRIBUTES"] = Value(",".join(published))


def _postgres_service(service: Service, server: Any, resolver: _Resolver) -> None:
    databases = [database.database_name for database in server.databases.values()]
    service.image = f"{server.image}:{server.tag}"
    service.environment["POSTGRES_USER"] = Value(server.user)
    service.environment["POSTGRES_PASSWORD"] = resolver.value("POSTGRES_PASSWORD", server.password)
    service.environment["POSTGRES_DB"] = Value(databases[0] if databases else server.user)
    service.volumes.append((server.data_volume or f"{server.name}-data", POSTGRES_DATA))
    if len(databases) > 1:
        service.init_sql = "".join(f'CREATE DATABASE "{database}";\n' for database in databases[1:])


def _container_service(service: Service, resource: Any, out_dir: Path, args: list[str]) -> None:
    if resource.dockerfile:
        context, dockerfile, _build_args = resource.dockerfile
        service.build = (os.path.relpath(context, out_dir), dockerfile)
        service.dockerfile_path = os.path.relpath(Path(context) / dockerfile, out_dir)
        service.image = f"{dns_name(resource.stack.name)}/{service.name}:latest"
    else:
        image = resource.image
        service.image = f"{image}:{resource.tag}" if resource.tag else image
    service.command = args or None
    service.entrypoint = resource.entrypoint
    service.volumes = list(resource.volumes)
    service.bind_mounts = list(resource.bind_mounts)


def _python_service(stack: Any, service: Service, resource: Any, out_dir: Path,
                    dockerfiles: dict[str, str], args: list[str]) -> None:
    module = None
    if resource.kind == "uvicorn_app":
        module = resource.app.partition(":")[0]
        source = _module_path(module) or (resource.cwd or stack.source_dir)
        root = _project_root(resource.cwd or source)
        port = service.ports.get("http", DEFAULT_HTTP_PORT)
        command = ["python", "-m", "uvicorn", resource.app, "--host", "0.0.0.0", "--port", str(port), *args]
        service.environment["PORT"] = Value(str(port))
    elif resource.kind == "python_app":
        if resource.module:
            module = resource.module
            root = _project_root(resource.cwd or _module_path(resource.module) or stack.source_dir)
            command = ["python", "-m", resource.module, *args]
        else:
            root = _project_root(resource.cwd or resource.script)
            command = ["python", _inside(resource.script, root), *args]
    elif resource.kind == "migrations":
        changelog = Path(resource.changelog)
        root = _project_root(changelog)
        command = ["python", "-m", "homunculy_nb.migrations", _inside(changelog, root), *args]
        service.one_shot = True
    elif resource.kind == "executable":
        root = _project_root(resource.cwd or stack.source_dir)
        command = [resource.command, *args]
        service.notes.append(
            f"`{resource.name}` is a local program; its image is the Python base image with the project "
            "copied in, so the program must exist there."
        )
    else:
        raise ConfigurationError(f"Resource `{resource.name}` of kind {resource.kind!r} cannot be published.")

    folder = f"build/{service.name}"
    dockerfiles[f"{folder}/Dockerfile"] = _dockerfile(root, _extras(module))
    # BuildKit reads `<Dockerfile>.dockerignore` beside the Dockerfile, so the project needs no change.
    dockerfiles[f"{folder}/Dockerfile.dockerignore"] = DOCKERIGNORE
    service.build = (os.path.relpath(root, out_dir), os.path.relpath(out_dir / folder / "Dockerfile", root))
    service.dockerfile_path = f"{folder}/Dockerfile"
    service.image = f"{dns_name(stack.name)}/{service.name}:latest"
    service.command = command


def _health(service: Service, resource: Any) -> HealthTest | None:
    if resource.kind == "postgres":
        return HealthTest("command", command=[
            "pg_isready", "-h", "127.0.0.1", "-U", resource.user, "-d",
            service.environment["POSTGRES_DB"].text,
        ])

    for check in resource.health_checks:
        if isinstance(check, HttpHealthCheck):
            return HealthTest("http", port=service.ports.get(check.endpoint), path=check.path)
        if isinstance(check, TcpHealthCheck):
            endpoint = check.endpoint or next(iter(service.ports), None)
            if endpoint in service.ports:
                return HealthTest("tcp", port=service.ports[endpoint])
        if isinstance(check, CallableHealthCheck):
            service.notes.append(f"Health check {check.describe()} runs in Python only and is not published.")
    return None


def _add_dependencies(service: Service, resource: Any, services: dict[str, Service]) -> None:
    for wait in resource.waits:
        target = dns_name(service_of(wait[0]).name)
        if target == service.name:
            continue
        if wait[1] == "completed":
            service.depends_on[target] = "completed"
        elif services[target].health is not None:
            service.depends_on[target] = "healthy"
        else:
            service.depends_on[target] = "started"
