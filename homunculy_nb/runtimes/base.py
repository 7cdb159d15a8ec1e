"""The contract between the orchestrator and the runtimes.

The orchestrator resolves a resource's declaration into a `Launch` (command, environment with secret
values revealed, allocated ports, kind-specific options) and hands it to the resource's `Runtime`. The
runtime starts the thing and returns a `Running` handle that the orchestrator waits on, probes, and stops.
Everything here runs on the package's background event loop.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Receives one line of console output: (stream, line), stream being "stdout", "stderr" or "system".
OutputCallback = Callable[[str, str], None]


@dataclass
class Launch:
    """Everything a runtime needs to start one resource, resolved and ready to use."""

    name: str
    run_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    host: str = "127.0.0.1"
    command: list[str] | None = None
    cwd: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    on_output: OutputCallback = lambda stream, line: None

    def __repr__(self) -> str:
        # The environment, arguments and options may carry revealed secrets, so they are not shown.
        program = self.command[0] if self.command else None
        return (f"Launch(name={self.name!r}, program={program!r}, ports={self.ports!r}, "
                f"env keys={sorted(self.env)!r}, option keys={sorted(self.options)!r})")


class Running(abc.ABC):
    """A started resource: something the orchestrator can wait on, probe and stop."""

    pid: int | None = None

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait until the resource ends and return its exit code."""

    @abc.abstractmethod
    async def stop(self, timeout: float = 10.0) -> int | None:
        """Stop gracefully, force after `timeout` seconds, and return the exit code when known."""

    async def probe(self) -> bool | None:
        """Check the runtime's own notion of health; `None` when it has none."""
        return None

    def state_record(self) -> dict[str, Any]:
        """Describe this instance for the state file, so a later process can stop it as an orphan."""
        return {"pid": self.pid}


class Runtime(abc.ABC):
    """Starts one kind of resource."""

    @abc.abstractmethod
    async def start(self, launch: Launch) -> Running:
        """Start the resource described by `launch` and return its handle once it is running."""

    def check_available(self, launch: Launch) -> None:
        """Raise `RuntimeUnavailableError` when this runtime cannot start `launch` on this machine.

        Called for every resource before anything starts; the default accepts everything.
        """

    @classmethod
    def stop_orphan(cls, record: dict[str, Any]) -> bool:
        """Stop an instance left behind by a crashed process, from its state record.

        Returns True when something was stopped.
        """
        return False


# -- runtime registry --------------------------------------------------------------------------
#
# The orchestrator picks a runtime by key: "process" for executables and Python apps, "postgres" for
# PostgreSQL servers on the machine's binaries, "docker" for containers and Docker-run servers. A runtime
# module registers itself with `register_runtime`; the built-in ones are also found by module path, so
# importing them in advance is not needed.

_registry: dict[str, type[Runtime]] = {}
_builtin: dict[str, tuple[str, str]] = {
    "process": ("homunculy_nb.runtimes.process", "ProcessRuntime"),
    "postgres": ("homunculy_nb.runtimes.postgres", "PostgresRuntime"),
    "docker": ("homunculy_nb.runtimes.docker", "DockerRuntime"),
}


def register_runtime(key: str, runtime: type[Runtime]) -> None:
    """Make `runtime` the runtime for `key` ("process", "postgres", "docker" or a new one)."""
    _registry[key] = runtime


def find_runtime(key: str) -> type[Runtime] | None:
    """Return the runtime class registered for `key`, importing a built-in one on first use, or None."""
    if key in _registry:
        return _registry[key]
    if key not in _builtin:
        return None

    import importlib

    module_name, class_name = _builtin[key]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing runtime module means "not installed"; a missing import inside it is a bug.
        if exc.name != module_name:
            raise
        return None

    runtime = getattr(module, class_name, None)
    if runtime is not None:
        _registry.setdefault(key, runtime)
    return _registry.get(key)
