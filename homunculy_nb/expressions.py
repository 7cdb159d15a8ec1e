"""Values resolved at launch: host, port, URL, connection string, parameter.

An expression is declared before anything runs (`server.port`, `app.endpoint("http").url`) and resolved
when the orchestrator has allocated the ports. Resolution depends on who consumes the value, given by a
`ResolveContext`:

- `"host"`: a process on this machine; every endpoint is `127.0.0.1` and its allocated host port.
- `"container"`: a container on the stack's Docker network; containers are reached by resource name and
  target port, host processes through `host.docker.internal` and their allocated port.
- `"manifest"`: a published Compose or Kubernetes file, where every resource is a service reached by
  its name; parameters become whatever `ResolveContext.parameter` returns (for example `${NAME}`).

A value that contains a secret resolves to a `Secret`, so it stays masked until a runtime reveals it
for a child's environment.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from homunculy_nb.errors import ConfigurationError, StateError
from homunculy_nb.parameters import Parameter, Secret

if TYPE_CHECKING:
    from homunculy_nb.stack import Endpoint, Resource

# Hostname a container uses to reach the Docker host (mapped with `host-gateway`).
DOCKER_HOST_GATEWAY = "host.docker.internal"
SIDES = ("host", "container", "manifest")


@dataclass(frozen=True)
class ResolveContext:
    """Who consumes a resolved value; see the module docstring for the sides."""

    side: str = "host"
    # Replaces a parameter's value, e.g. `lambda p: "${" + env_name(p.name) + "}"` for Compose files.
    parameter: Callable[[Parameter], str] | None = None

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ConfigurationError(f"Invalid resolve side {self.side!r}: use one of {', '.join(SIDES)}.")


HOST = ResolveContext()

Part = Union[str, Secret, Parameter, "Expression"]


class Expression:
    """A value known once the stack is launched."""

    def resolve(self, context: ResolveContext = HOST) -> str | Secret:
        """Return the value for a consumer described by `context`; raise `StateError` before launch."""
        raise NotImplementedError

    @property
    def value(self) -> str | Secret:
        """The value as a process on this machine sees it: a `Secret` when it contains one."""
        return self.resolve(HOST)

    def reveal(self) -> str:
        """Return the value for a process on this machine, with any secret unmasked."""
        return reveal(self.resolve(HOST))

    def resources(self) -> list[Resource]:
        """Return the resources whose endpoints this expression reads."""
        return []

    def describe(self) -> str:
        """Return a one-line description with no secret value."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def __str__(self) -> str:
        return self.describe()


def reveal(value: str | Secret) -> str:
    """Return `value` with a secret unmasked."""
    return value.reveal() if isinstance(value, Secret) else value


def resolve_part(part: Part, context: ResolveContext = HOST) -> str | Secret:
    """Resolve one environment value: a string, a secret, a parameter or an expression."""
    if isinstance(part, Expression):
        return part.resolve(context)
    if isinstance(part, Parameter):
        if context.parameter is not None:
            return context.parameter(part)
        return part.value
    if isinstance(part, (str, Secret)):
        return part
    raise ConfigurationError(f"Cannot resolve {part!r}: expected a str, Secret, Parameter or Expression.")


def describe_part(part: Part) -> str:
    """Describe one value without revealing a secret."""
    if isinstance(part, (Expression, Parameter)):
        return f"{{{part.describe()}}}"
    return str(part)


class EndpointProperty(Expression):
    """One property of a resource's endpoint: "url", "host", "port", "host_and_port" or "scheme"."""

    PROPERTIES = ("url", "host", "port", "host_and_port", "scheme")

    def __init__(self, endpoint: Endpoint, prop: str) -> None:
        if prop not in self.PROPERTIES:
            raise ConfigurationError(f"Unknown endpoint property {prop!r}: use one of {', '.join(self.PROPERTIES)}.")
        self.endpoint = endpoint
        self.property = prop

    def resolve(self, context: ResolveContext = HOST) -> str:
        host, port = _address(self.endpoint, context)
        scheme = self.endpoint.scheme
        if self.property == "host":
            return host
        if self.property == "port":
            return str(port)
        if self.property == "scheme":
            return scheme
        if self.property == "host_and_port":
            return f"{host}:{port}"
        return f"{scheme}://{host}:{port}"

    def resources(self) -> list[Resource]:
        return [self.endpoint.resource]

    def describe(self) -> str:
        return f"{self.endpoint.resource.name}.{self.endpoint.name}.{self.property}"


def _address(endpoint: Endpoint, context: ResolveContext) -> tuple[str, int]:
    resource = endpoint.resource

    if context.side == "manifest":
        port = endpoint.target_port or endpoint.port
        if port is None:
            raise StateError(
                f"Endpoint `{endpoint.name}` of `{resource.name}` has neither a port nor a target port, "
                "so a published file cannot address it. Pass port= or target_port= to its endpoint."
            )
        return resource.name, port

    allocated = endpoint.allocated
    if allocated is None:
        raise StateError(
            f"Endpoint `{endpoint.name}` of `{resource.name}` has no port yet: it is allocated when the "
            "stack starts. Call `stack.up()` first."
        )

    if context.side == "container":
        if resource.runs_in_container:
            return resource.name, endpoint.target_port or allocated.port
        return DOCKER_HOST_GATEWAY, allocated.port

    return allocated.host, allocated.port


class EndpointReference(Expression):
    """A resource's endpoint, as returned by `resource.endpoint(name)`; its value is the URL."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @property
    def url(self) -> EndpointProperty:
        return EndpointProperty(self.endpoint, "url")

    @property
    def host(self) -> EndpointProperty:
        return EndpointProperty(self.endpoint, "host")

    @property
    def port(self) -> EndpointProperty:
        return EndpointProperty(self.endpoint, "port")

    @property
    def host_and_port(self) -> EndpointProperty:
        return EndpointProperty(self.endpoint, "host_and_port")

    @property
    def is_allocated(self) -> bool:
        """Whether the stack has allocated this endpoint's port."""
        return self.endpoint.allocated is not None

    def resolve(self, context: ResolveContext = HOST) -> str:
        return self.url.resolve(context)

    def resources(self) -> list[Resource]:
        return [self.endpoint.resource]

    def describe(self) -> str:
        return f"{self.endpoint.resource.name}.{self.endpoint.name}"


class ReferenceExpression(Expression):
    """A string template whose `{}` placeholders are filled with values resolved at launch.

    `quote=True` percent-encodes every part except expressions (for passwords inside a URI).
    """

    def __init__(self, template: str, *parts: Part, quote: bool = False) -> None:
        if template.count("{}") != len(parts):
            raise ConfigurationError(
                f"Template {template!r} has {template.count('{}')} placeholders but {len(parts)} values."
            )
        self.template = template
        self.parts = parts
        self.quote = quote

    def resolve(self, context: ResolveContext = HOST) -> str | Secret:
        values: list[str] = []
        secret = False
        for part in self.parts:
            resolved = resolve_part(part, context)
            if isinstance(resolved, Secret):
                secret = True
            text = reveal(resolved)

            # A placeholder from ResolveContext.parameter (say `${DB_PASSWORD}`) stays as written.
            substituted = isinstance(part, Parameter) and context.parameter is not None
            if self.quote and not isinstance(part, Expression) and not substituted:
                text = urllib.parse.quote(text, safe="")
            values.append(text)

        result = self.template.format(*values)
        return Secret(result) if secret else result

    def resources(self) -> list[Resource]:
        found: list[Resource] = []
        for part in self.parts:
            if isinstance(part, Expression):
                found.extend(resource for resource in part.resources() if resource not in found)
        return found

    def describe(self) -> str:
        return self.template.format(*(describe_part(part) for part in self.parts))


class CallableExpression(Expression):
    """A value computed at launch by a function of the context, for settings read from live objects."""

    def __init__(self, function: Callable[[ResolveContext], str | Secret], description: str,
                 resources: list[Resource] | None = None) -> None:
        self.function = function
        self.description = description
        self._resources = resources or []

    def resolve(self, context: ResolveContext = HOST) -> str | Secret:
        return self.function(context)

    def resources(self) -> list[Resource]:
        return list(self._resources)

    def describe(self) -> str:
        return self.description


def to_part(value: Any) -> Part:
    """Normalize an environment value: keep str, Secret, Parameter and Expression; format numbers and bools."""
    if isinstance(value, (str, Secret, Parameter, Expression)):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise ConfigurationError(
        f"Invalid environment value {value!r} ({type(value).__name__}): use a str, a number, a parameter "
        "or an expression such as `server.port`."
    )
