"""The exceptions homunculy-nb raises.

HomunculyError
├── ConfigurationError        a declaration or argument is invalid; raised before anything starts
│   └── ParameterError        a required parameter has no value, or a parameter name is invalid
├── ResourceError             a resource failed while launching or running (names the resource)
│   ├── PortInUseError        a fixed port is taken by another process
│   ├── StartupError          `up()` gave up: a resource failed to start, exited or never became healthy
│   └── RuntimeUnavailableError  the runtime for a resource is missing (PostgreSQL binaries, Docker engine)
├── StateError                a call does not fit the resource's current state
├── MigrationError            a changelog is invalid, a change set failed, or an applied checksum changed
├── CollectorError            the OTLP collector could not bind or was used before `start()`
└── ChatError                 see `homunculy_nb.chat` for the chat client's own subtree

Foreign errors (psycopg, grpc, docker, websockets) are translated where they are caught and chained
with `raise ... from exc`.
"""

from __future__ import annotations


class HomunculyError(Exception):
    """Base class of every error homunculy-nb raises on purpose."""


class ConfigurationError(HomunculyError, ValueError):
    """Raised when a declaration or an argument is invalid, before anything starts."""


class ParameterError(ConfigurationError):
    """Raised when a parameter is misnamed or a required parameter has no value."""


class ResourceError(HomunculyError):
    """Raised when a resource fails while launching or running."""

    def __init__(self, message: str, resource: str | None = None) -> None:
        super().__init__(message)
        self.resource = resource


class PortInUseError(ResourceError):
    """Raised when a fixed port for a resource is already bound by another process."""

    def __init__(self, message: str, resource: str | None = None, port: int | None = None,
                 pid: int | None = None) -> None:
        super().__init__(message, resource)
        self.port = port
        self.pid = pid


class StartupError(ResourceError):
    """Raised by `Stack.up()` when a resource failed to start, exited early or never became healthy."""


class RuntimeUnavailableError(ResourceError):
    """Raised when the runtime a resource needs is not installed or not reachable."""


class StateError(HomunculyError):
    """Raised when a call does not fit a resource's current state."""


class MigrationError(HomunculyError):
    """Raised when a changelog is invalid, a change set fails, or an applied checksum changed."""


class CollectorError(HomunculyError):
    """Raised when the OTLP collector cannot bind its ports or is queried before `start()`."""


class ChatError(HomunculyError):
    """Base class of the chat client's errors."""
