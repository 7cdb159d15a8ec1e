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

    @classmethod
    def stop_orphan(cls, record: dict[str, Any]) -> bool:
        """Stop an instance left behind by a crashed process, from its state record.

        Returns True when something was stopped.
        """
        return False
