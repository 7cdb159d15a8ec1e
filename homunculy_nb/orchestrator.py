"""The engine that runs a stack: dependency order, ports, states, waits, health, events, logs.

`Orchestrator.up_async` validates the whole model first (dependency cycles, parameters, runtimes), so
a missing parameter or runtime fails before anything starts. It then allocates every endpoint's port
and starts one task per resource. A task waits for what its resource waits on, launches it through its
runtime, probes its health and records how it ended. Independent resources start in parallel.

Everything runs on the package's background loop; the synchronous methods are thin wrappers.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import enum
import functools
import json
import logging
import os
import socket
import sys
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homunculy_nb import _loop
from homunculy_nb.errors import (
    ConfigurationError,
    PortInUseError,
    ResourceError,
    RuntimeUnavailableError,
    StartupError,
    StateError,
)
from homunculy_nb.expressions import HOST, ResolveContext, resolve_part
from homunculy_nb.health import probe
from homunculy_nb.parameters import MASK, Parameter, Secret
from homunculy_nb.runtimes.base import Launch, Running, Runtime, find_runtime
from homunculy_nb.runtimes.process import run_blocking
from homunculy_nb.stack import AllocatedEndpoint, Resource, Wait
from homunculy_nb.state import StateDir, launcher_alive, launcher_record, stop_orphans

if TYPE_CHECKING:
    import pandas as pd

    from homunculy_nb.stack import Stack

logger = logging.getLogger(__name__)

LOG_BUFFER = 100_000       # console lines kept in memory per stack
ERROR_TAIL = 20            # last lines of a resource shown in a startup error
HEALTH_POLL_FIRST = 0.02   # seconds between health probes right after start, growing to HEALTH_POLL_MAX
HEALTH_POLL_MAX = 0.1
HEALTH_POLL_HEALTHY = 2.0  # seconds between probes once healthy


class ResourceState(str, enum.Enum):
    """The state of a resource, in the orchestration vocabulary."""

    NOT_STARTED = "NotStarted"
    WAITING = "Waiting"
    STARTING = "Starting"
    RUNNING = "Running"
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    FINISHED = "Finished"
    EXITED = "Exited"
    FAILED_TO_START = "FailedToStart"
    STOPPING = "Stopping"
    STOPPED = "Stopped"

    def __str__(self) -> str:
        return self.value


S = ResourceState
# A process (or its virtual stand-in) exists in these states.
ACTIVE = frozenset({S.STARTING, S.RUNNING, S.HEALTHY, S.UNHEALTHY, S.STOPPING})
TERMINAL = frozenset({S.FINISHED, S.EXITED, S.FAILED_TO_START, S.STOPPED})


@dataclass(frozen=True)
class ResourceEvent:
    """One state change of a resource."""

    time: datetime
    resource: str
    state: ResourceState
    previous: ResourceState | None
    message: str = ""


class ResourceRun:
    """The run-time record of one resource: state, health, process handle, exit code, recent lines."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.state = S.NOT_STARTED
        self.health: str | None = None
        self.health_detail = ""
        self.running: Running | None = None
        self.runtime_key: str | None = None
        self.pid: int | None = None
        self.started_at: datetime | None = None
        self.exit_code: int | None = None
        self.restarts = 0
        self.last_error: str | None = None
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.tail: collections.deque[str] = collections.deque(maxlen=ERROR_TAIL)
        self.log_handle: Any = None
        self.log_started = False

    @property
    def name(self) -> str:
        return self.resource.name


# The orchestrator that writes each state directory's state file, by directory.
_state_owners: weakref.WeakValueDictionary[Path, Orchestrator] = weakref.WeakValueDictionary()


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Orchestrator:
    """Runs one stack. Create it through `Stack.orchestrator`; use the `Stack` methods."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.state_dir = StateDir(stack.state_dir)
        self.run_id = uuid.uuid4().hex[:8]
        self.runs: dict[str, ResourceRun] = {}
        self._runtimes: dict[str, Runtime] = {}
        self._events: list[ResourceEvent] = []
        self._logs: collections.deque[tuple[datetime, str, str, str]] = collections.deque(maxlen=LOG_BUFFER)
        self._log_lock = threading.Lock()
        self._event_subscribers: list[Callable[[ResourceEvent], None]] = []
        self._log_subscribers: list[Callable[[datetime, str, str, str], None]] = []
        self._secret_values: set[str] = set()
        self._changed: asyncio.Event | None = None
        self._launcher: dict[str, Any] | None = None
        self._atexit_registered = False
        self._reserved_ports: set[int] = set()
        # "cli" when `homunculy-nb up` runs the stack, so `homunculy-nb down` may signal that process.
        self.launcher_kind = "python"

    # -- model bookkeeping

    def _sync_runs(self) -> None:
        for name, resource in self.stack.resources.items():
            if name not in self.runs or self.runs[name].resource is not resource:
                self.runs[name] = ResourceRun(resource)
        for name in [name for name, run in self.runs.items()
                     if name not in self.stack.resources and run.state not in ACTIVE]:
            del self.runs[name]

    def _run(self, name: str) -> ResourceRun:
        self._sync_runs()
        if name not in self.runs:
            self.stack.resource(name)  # raises ConfigurationError listing the declared names
        return self.runs[name]

    def dependencies(self, resource: Resource) -> list[Resource]:
        """Return what `resource` must outlive: its waits, its parent and the resources it references."""
        found: list[Resource] = []
        for candidate in [*resource.dependencies(), resource.parent, *resource.references]:
            if candidate is not None and candidate not in found and candidate.name in self.stack.resources:
                found.append(candidate)
        return found

    def _waits(self, resource: Resource) -> list[Wait]:
        waits = list(resource.waits)
        # A database is ready when its server is healthy.
        if resource.kind == "database" and resource.parent is not None:
            waits.insert(0, Wait(resource.parent, "healthy"))
        return waits

    def _check_cycles(self) -> None:
        visiting: list[str] = []
        done: set[str] = set()

        def visit(resource: Resource) -> None:
            if resource.name in done:
                return
            if resource.name in visiting:
                cycle = visiting[visiting.index(resource.name):] + [resource.name]
                raise ConfigurationError(
                    "Resources wait on each other in a cycle: " + " -> ".join(f"`{n}`" for n in cycle)
                    + ". Remove one of these waits."
                )
            visiting.append(resource.name)
            for wait in self._waits(resource):
                visit(wait.resource)
            visiting.pop()
            done.add(resource.name)

        for resource in self.stack.resources.values():
            visit(resource)

    def _blocked_by_explicit(self, resource: Resource, seen: set[str] | None = None) -> bool:
        seen = seen if seen is not None else set()
        for wait in self._waits(resource):
            dependency = wait.resource
            if dependency.name in seen:
                continue
            seen.add(dependency.name)
            if dependency.explicit_start or self._blocked_by_explicit(dependency, seen):
                return True
        return False

    # -- events and logs

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Wait on the loop until `predicate()` returns something other than None."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._changed is None:
                self._changed = asyncio.Event()
            changed = self._changed
            result = predicate()
            if result is not None:
                return result
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise asyncio.TimeoutError
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except asyncio.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    def _set_state(self, run: ResourceRun, state: ResourceState, message: str = "") -> None:
        previous = run.state
        if previous == state and not message:
            return
        run.state = state
        message = self.mask(message)
        event = ResourceEvent(_now(), run.name, state, previous, message)
        self._events.append(event)
        logger.info("`%s` %s%s", run.name, state.value, f": {message}" if message else "")

        for callback in list(self._event_subscribers):
            try:
                callback(event)
            except Exception:  # noqa: BLE001 - a view's bug must not stop the stack
                logger.exception("Event subscriber %r failed", callback)

        self._write_state()
        self._notify()

    def _on_output(self, run: ResourceRun, stream: str, line: str) -> None:
        line = self.mask(line)
        stamp = _now()
        with self._log_lock:
            self._logs.append((stamp, run.name, stream, line))
            run.tail.append(line)
            if run.log_handle is not None:
                try:
                    run.log_handle.write(f"{stamp.isoformat()}\t{stream}\t{line}\n")
                except (OSError, ValueError):
                    pass
        for callback in list(self._log_subscribers):
            try:
                callback(stamp, run.name, stream, line)
            except Exception:  # noqa: BLE001 - a view's bug must not stop the output
                logger.exception("Log subscriber %r failed", callback)

    def mask(self, text: str) -> str:
        """Replace every secret value this stack resolved with the mask."""
        for value in sorted(self._secret_values, key=len, reverse=True):
            if value in text:
                text = text.replace(value, MASK)
        return text

    def _remember_secret(self, value: str) -> None:
        # Short values would mask ordinary words in logs; they are still never printed on purpose.
        if len(value) < 4:
            return

        # Apps print a secret inside JSON logs, Python reprs and URLs too, where quotes, backslashes and
        # non-ASCII letters appear escaped, so each escaped form is masked as well.
        forms = {
            value,
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote(value),
            urllib.parse.quote_plus(value),
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1],
            ascii(value)[1:-1],
        }
        self._secret_values.update(form for form in forms if len(form) >= 4)

    def on_event(self, callback: Callable[[ResourceEvent], None]) -> Callable[[], None]:
        self._event_subscribers.append(callback)
        return lambda: self._event_subscribers.remove(callback) if callback in self._event_subscribers else None

    def on_log(self, callback: Callable[[datetime, str, str, str], None]) -> Callable[[], None]:
        self._log_subscribers.append(callback)
        return lambda: self._log_subscribers.remove(callback) if callback in self._log_subscribers else None

    # -- state file

    def _write_state(self) -> None:
        if self._launcher is None or _state_owners.get(self.state_dir.root) is not self:
            return
        resources: dict[str, Any] = {}
        for run in self.runs.values():
            entry: dict[str, Any] = {
                "kind": run.resource.kind,
                "state": run.state.value,
                "health": run.health,
                "pid": run.pid,
                "endpoints": self._endpoint_urls(run.resource),
                "started_at": run.started_at.isoformat() if run.started_at else None,
                "exit_code": run.exit_code,
                "restarts": run.restarts,
                "last_error": run.last_error,
            }
            if run.running is not None and run.state in ACTIVE:
                entry["runtime"] = run.runtime_key
                entry["record"] = run.running.state_record()
            resources[run.name] = entry

        state = {"stack": self.stack.name, "run_id": self.run_id, "launcher": self._launcher,
                 "resources": resources}
        try:
            self.state_dir.write(state)
        except OSError as exc:
            logger.warning("Failed to write the state file %s: %s", self.state_dir.state_file, exc)

    async def _prepare(self) -> None:
        """Create the state directory, stop what a crashed launcher left, and register the exit hook."""
        if self._launcher is not None:
            return

        # A newer orchestrator of the same state directory in this process (a re-run notebook cell)
        # takes the state file over; the older one stops writing it.
        _state_owners[self.state_dir.root] = self
        self.state_dir.prepare()
        previous = self.state_dir.read()
        other = launcher_alive(previous)
        if other is not None and previous.get("run_id") != self.run_id:
            if any(entry.get("record") for entry in previous.get("resources", {}).values()):
                raise StateError(
                    f"Stack `{self.stack.name}` is already running, launched by pid {other}. Stop it there, "
                    f"or run `homunculy-nb down {self.stack.state_dir}`."
                )
        stopped = await run_blocking(stop_orphans, self.state_dir)
        if stopped:
            logger.warning("Stopped resources left behind by an earlier run: %s", ", ".join(stopped))

        self._launcher = launcher_record(self.launcher_kind)
        if not self._atexit_registered:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True

    def _stop_at_exit(self) -> None:
        if not any(run.state in ACTIVE or (run.task and not run.task.done()) for run in self.runs.values()):
            return
        try:
            _loop.run(self.down_async(timeout=5.0), timeout=30.0)
        except Exception:  # noqa: BLE001 - interpreter shutdown; report and go on
            logger.exception("Failed to stop stack `%s` at exit", self.stack.name)

    # -- ports

    def _allocate_ports(self, resources: list[Resource]) -> None:
        for resource in resources:
            for endpoint in resource.endpoints.values():
                if endpoint.allocated is not None:
                    continue
                port = endpoint.port if endpoint.port is not None else self._free_port()
                endpoint.allocated = AllocatedEndpoint("127.0.0.1", port)

    def _free_port(self) -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in self._reserved_ports:
                self._reserved_ports.add(port)
                return port

    def _check_ports(self, run: ResourceRun) -> None:
        for endpoint in run.resource.endpoints.values():
            allocated = endpoint.allocated
            if allocated is None or port_available(allocated.port):
                continue

            holder = port_holder(allocated.port)
            by = f" by pid {holder}" if holder else ""
            hint = ("Stop that process or pass `port=None` to allocate a free one." if endpoint.port
                    else "Another process took the allocated port; start the resource again.")
            raise PortInUseError(
                f"Port {allocated.port} for `{run.name}` is in use{by}. {hint}",
                run.name, port=allocated.port, pid=holder,
            )

    async def _wait_ports_free(self, run: ResourceRun, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for endpoint in run.resource.endpoints.values():
            if endpoint.allocated is None:
                continue
            while not port_available(endpoint.allocated.port) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    @staticmethod
    def _endpoint_urls(resource: Resource) -> dict[str, str]:
        urls = {}
        for endpoint in resource.endpoints.values():
            if endpoint.allocated is not None:
                urls[endpoint.name] = f"{endpoint.scheme}://{endpoint.allocated.host}:{endpoint.allocated.port}"
        return urls

    # -- launches

    def _runtime_key(self, resource: Resource) -> str | None:
        if resource.kind == "database":
            return None
        if self.stack.runtime_for(resource) == "docker":
            return "docker"
        if resource.kind == "postgres":
            return "postgres"
        return "process"

    def _runtime(self, key: str, resource: Resource) -> Runtime:
        if key in self._runtimes:
            return self._runtimes[key]

        runtime_class = find_runtime(key)
        if runtime_class is None:
            if key == "docker":
                raise RuntimeUnavailableError(
                    f"`{resource.name}` runs in Docker, but no Docker runtime is installed in this "
                    "homunculy-nb (homunculy_nb.runtimes.docker is missing). Remove the resource or "
                    "install a version with Docker support.", resource.name)
            raise RuntimeUnavailableError(
                f"`{resource.name}` needs the {key!r} runtime, which is not installed "
                f"(module homunculy_nb.runtimes.{key} is missing).", resource.name)
        self._runtimes[key] = runtime_class()
        return self._runtimes[key]

    def _resolve(self, part: Any, context: ResolveContext) -> str:
        value = resolve_part(part, context)
        if isinstance(value, Secret):
            self._remember_secret(value.reveal())
            return value.reveal()
        return value

    def _build_launch(self, run: ResourceRun) -> tuple[str | None, Launch | None]:
        """Resolve a resource's declaration into its runtime key and `Launch`."""
        resource = run.resource
        key = self._runtime_key(resource)
        if key is None:
            return None, None

        for parameter in self.stack.parameters.values():
            if parameter.secret and parameter.has_value:
                self._remember_secret(_reveal(parameter.value))

        context = ResolveContext(side="container") if key == "docker" else HOST
        env = {name: self._resolve(value, context) for name, value in resource.environment.items()}
        args = [self._resolve(arg, context) for arg in resource.args]
        ports = {name: endpoint.allocated.port for name, endpoint in resource.endpoints.items()
                 if endpoint.allocated is not None}
        launch = Launch(name=resource.name, run_dir=self.state_dir.run_dir, env=env, ports=ports,
                        on_output=lambda stream, line: self._on_output(run, stream, line))

        if key == "docker":
            launch.options = self._docker_options(resource, args)
        elif key == "postgres":
            launch.options = self._postgres_options(resource)
        else:
            launch.command, launch.cwd = self._command(resource, args, launch)
        return key, launch

    def _postgres_options(self, server: Any) -> dict[str, Any]:
        if server.persistent:
            data_dir = self.state_dir.volume(server.data_volume)
        else:
            data_dir = self.state_dir.run_dir / f"{server.name}-data"
        return {
            "user": server.user,
            "password": _reveal(self._secret_parameter(server.password)),
            "databases": [database.database_name for database in server.databases.values()],
            "data_dir": data_dir,
            "persistent": server.persistent,
        }

    def _secret_parameter(self, parameter: Parameter) -> str | Secret:
        value = parameter.value
        if isinstance(value, Secret):
            self._remember_secret(value.reveal())
        return value

    def _docker_options(self, resource: Any, args: list[str]) -> dict[str, Any]:
        options: dict[str, Any] = {
            "resource": resource,
            "kind": resource.kind,
            "stack": self.stack.name,
            "image": getattr(resource, "image", None),
            "tag": getattr(resource, "tag", None),
            "bind_mounts": list(getattr(resource, "bind_mounts", [])),
            "volumes": list(getattr(resource, "volumes", [])),
            "entrypoint": getattr(resource, "entrypoint", None),
            "args": args or None,
            "run_id": self.run_id,
            "dockerfile": getattr(resource, "dockerfile", None),
            "network": f"homunculy-nb-{self.stack.name}",
            "labels": {"homunculy-nb.stack": self.stack.name, "homunculy-nb.resource": resource.name,
                       "homunculy-nb.run": self.run_id},
            "target_ports": {name: endpoint.target_port for name, endpoint in resource.endpoints.items()},
        }
        if resource.kind == "postgres":
            options.update(self._postgres_options(resource))
            options["data_volume"] = resource.data_volume
        return options

    def _command(self, resource: Any, args: list[str], launch: Launch) -> tuple[list[str], Path]:
        cwd = Path(getattr(resource, "cwd", None) or self.stack.source_dir)
        launch.env.setdefault("PYTHONUNBUFFERED", "1")

        if resource.kind == "executable":
            return [resource.command, *args], cwd
        if resource.kind == "python_app":
            target = [str(resource.script)] if resource.script else ["-m", resource.module]
            return [sys.executable, *target, *args], cwd
        if resource.kind == "uvicorn_app":
            port = str(launch.ports["http"])
            return [resource.python, "-m", "uvicorn", resource.app, "--host", "127.0.0.1", "--port", port,
                    *args], cwd
        if resource.kind == "migrations":
            # The child imports the same homunculy_nb as this process, wherever it was loaded from.
            package_root = str(Path(__file__).resolve().parent.parent)
            existing = launch.env.get("PYTHONPATH") or os.environ.get("PYTHONPATH")
            launch.env["PYTHONPATH"] = package_root + (os.pathsep + existing if existing else "")
            return [*resource.command, *args], cwd
        raise ConfigurationError(f"`{resource.name}` has kind {resource.kind!r}, which no runtime starts.")

    def _preflight(self, runs: list[ResourceRun]) -> None:
        """Resolve every launch once, so a missing parameter, file or runtime fails before anything starts."""
        for run in runs:
            _check_paths(run.resource)
            key, launch = self._build_launch(run)
            if key is None:
                continue
            runtime = self._runtime(key, run.resource)
            runtime.check_available(launch)
            if key == "postgres":
                # Name the install command before anything starts, not when the server is launched.
                from homunculy_nb.runtimes.postgres import find_postgres_bin

                try:
                    find_postgres_bin("postgres")
                except RuntimeUnavailableError as exc:
                    raise RuntimeUnavailableError(f"Cannot start `{run.name}`: {exc}", run.name) from exc

    # -- one resource

    def _wait_outcome(self, wait: Wait) -> tuple[bool, str] | None:
        dependency = self.runs[wait.resource.name]
        state = dependency.state
        name = dependency.name

        if wait.condition == "healthy":
            if state == S.HEALTHY:
                return True, ""
            if state in TERMINAL:
                return False, f"`{name}` is {state.value}" + _reason(dependency)
        else:
            if state in (S.FINISHED, S.EXITED):
                if dependency.exit_code == wait.exit_code:
                    return True, ""
                return False, f"`{name}` exited with code {dependency.exit_code}, expected {wait.exit_code}"
            if state in (S.FAILED_TO_START, S.STOPPED):
                return False, f"`{name}` is {state.value}" + _reason(dependency)

        if state == S.NOT_STARTED and dependency.last_error:
            return False, f"`{name}` was not started"
        return None

    async def _run_resource(self, run: ResourceRun) -> None:
        try:
            await self._wait_and_launch(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug here must still show up as the resource's state
            logger.exception("Running `%s` failed", run.name)
            run.last_error = self.mask(_describe_error(exc))
            self._set_state(run, S.FAILED_TO_START if run.running is None else S.EXITED, run.last_error)

    async def _wait_and_launch(self, run: ResourceRun) -> None:
        waits = self._waits(run.resource)
        if waits:
            pending = ", ".join(f"`{w.resource.name}` {'healthy' if w.condition == 'healthy' else 'completed'}"
                                for w in waits)
            self._set_state(run, S.WAITING, f"waiting for {pending}")
        for wait in waits:
            satisfied, reason = await self._until(lambda wait=wait: self._wait_outcome(wait))
            if not satisfied:
                run.last_error = f"Not started because {reason}."
                self._set_state(run, S.NOT_STARTED, run.last_error)
                return

        if run.resource.kind == "database":
            await self._run_database(run)
            return
        await self._launch_and_watch(run)

    async def _run_database(self, run: ResourceRun) -> None:
        server = self.runs[run.resource.parent.name]
        run.started_at = _now()
        self._set_state(run, S.RUNNING)
        run.health = "Healthy"
        self._set_state(run, S.HEALTHY)

        # The database lives as long as its server runs.
        await self._until(lambda: True if server.state not in ACTIVE else None)
        run.health = None
        self._set_state(run, S.STOPPED if server.state == S.STOPPED else S.EXITED,
                        f"server `{server.name}` is {server.state.value}")

    async def _launch_and_watch(self, run: ResourceRun) -> None:
        self._set_state(run, S.STARTING)
        run.exit_code = None
        run.health = None
        run.stopping = False

        try:
            key, launch = self._build_launch(run)
            self._check_ports(run)
            runtime = self._runtime(key, run.resource)
            self._open_log(run)
            start = asyncio.ensure_future(runtime.start(launch))
            try:
                running = await asyncio.shield(start)
            except asyncio.CancelledError:
                # down() during a start: let the start finish, then stop what it started.
                running = await _result_or_none(start)
                if running is not None:
                    await running.stop(5.0)
                raise
        except asyncio.CancelledError:
            self._close_log(run)
            run.last_error = "Start cancelled."
            self._set_state(run, S.NOT_STARTED, run.last_error)
            raise
        except Exception as exc:  # noqa: BLE001 - any start failure becomes the resource's state
            self._close_log(run)
            run.last_error = self.mask(_describe_error(exc))
            self._set_state(run, S.FAILED_TO_START, run.last_error)
            return

        run.running, run.runtime_key = running, key
        run.pid = running.pid
        run.started_at = _now()
        self._set_state(run, S.RUNNING, f"pid {running.pid}" if running.pid else "")

        health = asyncio.ensure_future(self._watch_health(run, running))
        try:
            code = await running.wait()
        finally:
            health.cancel()

        run.exit_code = code
        run.running = None
        # A process that ended has no health any more, whatever its last probe returned.
        run.health = None
        self._close_log(run)
        if run.stopping:
            self._set_state(run, S.STOPPED, f"exit code {code}")
        elif code == 0:
            self._set_state(run, S.FINISHED, "exit code 0")
        else:
            run.last_error = f"`{run.name}` exited with code {code}."
            self._set_state(run, S.EXITED, run.last_error)

    async def _watch_health(self, run: ResourceRun, running: Running) -> None:
        resource = run.resource
        checks = list(resource.health_checks)
        interval = HEALTH_POLL_FIRST

        while True:
            if checks:
                results = [await probe(check, resource) for check in checks]
                healthy = all(result.healthy for result in results)
                detail = "; ".join(result.detail for result in results if not result.healthy)
            else:
                healthy = await _safe_probe(running)
                detail = "" if healthy else "runtime probe failed"
                if healthy is None:
                    # No check at all: a job stays Running, anything else counts as healthy.
                    if resource.kind != "migrations" and run.state == S.RUNNING and not run.stopping:
                        run.health = "Healthy"
                        self._set_state(run, S.HEALTHY)
                    return

            if run.state not in (S.RUNNING, S.HEALTHY, S.UNHEALTHY) or run.stopping:
                return
            run.health_detail = detail
            if healthy:
                run.health = "Healthy"
                self._set_state(run, S.HEALTHY)
                interval = HEALTH_POLL_HEALTHY
            elif run.state == S.HEALTHY:
                run.health = "Unhealthy"
                self._set_state(run, S.UNHEALTHY, detail)
            else:
                interval = min(interval * 1.5, HEALTH_POLL_MAX)
            await asyncio.sleep(interval)

    def _open_log(self, run: ResourceRun) -> None:
        with self._log_lock:
            if run.log_handle is not None:
                return
            try:
                self.state_dir.logs_dir.mkdir(parents=True, exist_ok=True)
                # The first launch in this process starts a fresh file; later launches append to it.
                mode = "a" if run.log_started else "w"
                run.log_started = True
                run.log_handle = open(self.state_dir.log_file(run.name), mode, encoding="utf-8", buffering=1)
            except OSError as exc:
                logger.warning("Cannot write the console log of `%s`: %s", run.name, exc)

    def _close_log(self, run: ResourceRun) -> None:
        with self._log_lock:
            if run.log_handle is not None:
                run.log_handle.close()
                run.log_handle = None

    async def _stop_run(self, run: ResourceRun, timeout: float) -> None:
        task = run.task
        if run.state == S.STARTING and task is not None:
            # Let a start in progress finish so its process is known, then stop it.
            try:
                await self._until(lambda: True if run.state != S.STARTING else None, timeout + 60.0)
            except asyncio.TimeoutError:
                logger.warning("`%s` is still starting after %.0f s; cancelling its start", run.name, timeout + 60.0)
                task.cancel()
                await asyncio.wait([task], timeout=timeout)

        if run.running is not None and run.state in ACTIVE:
            run.stopping = True
            self._set_state(run, S.STOPPING)
            try:
                await run.running.stop(timeout)
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest of the stack
                logger.warning("Stopping `%s` failed: %s", run.name, exc)
            if task is not None:
                await asyncio.wait([task], timeout=timeout + 5.0)
        elif task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=timeout)
            if run.resource.kind == "database" and run.state in ACTIVE:
                self._set_state(run, S.STOPPED)
            elif run.state in (S.WAITING, S.NOT_STARTED):
                self._set_state(run, S.NOT_STARTED, "stopped before it started")
        self._close_log(run)

    async def _stop_many(self, names: list[str], timeout: float) -> None:
        """Stop `names` with every resource stopped after the resources that depend on it.

        Resources that depend on each other in a cycle (two apps referencing each other, or waits that
        `up()` rejected as a cycle) stop together, because neither can outlive the other.
        """
        tasks: dict[str, asyncio.Task] = {}
        selected = set(names)
        dependents = {
            name: {other for other in selected if other != name and name in
                   {dependency.name for dependency in self.dependencies(self.runs[other].resource)}}
            for name in selected
        }

        def transitive_dependents(name: str) -> set[str]:
            found: set[str] = set()
            pending = list(dependents[name])
            while pending:
                other = pending.pop()
                if other not in found:
                    found.add(other)
                    pending.extend(dependents[other])
            return found

        reachable = {name: transitive_dependents(name) for name in selected}

        async def stop_one(name: str) -> None:
            # A dependent that this resource also leads back to is in a cycle with it, so waiting for it
            # would wait forever.
            first = [other for other in dependents[name] if name not in reachable[other]]
            if first:
                await asyncio.wait([tasks[other] for other in first])
            await self._stop_run(self.runs[name], timeout)

        for name in names:
            tasks[name] = asyncio.ensure_future(stop_one(name))
        if tasks:
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    # -- public API (async)

    async def up_async(self, wait: bool = True, timeout: float | None = 120.0,
                       progress: bool | None = False) -> None:
        """Start every resource without explicit start, in dependency order and in parallel.

        Returns once each of them is Healthy (or Finished), unless a dependency is explicit-start.
        Raises `StartupError` naming the failing resource, with its last log lines.
        """
        self._sync_runs()
        self._check_cycles()

        selected = [run for run in self.runs.values()
                    if not run.resource.explicit_start and run.state not in ACTIVE
                    and not (run.task and not run.task.done())]
        self._allocate_ports(list(self.stack.resources.values()))
        self._preflight(selected)
        await self._prepare()

        for run in selected:
            run.last_error = None
            run.state = S.NOT_STARTED
        for run in selected:
            run.task = asyncio.ensure_future(self._run_resource(run))

        if not wait:
            return
        targets = [run for run in self.runs.values()
                   if not run.resource.explicit_start and not self._blocked_by_explicit(run.resource)]
        await self._wait_ready(targets, timeout)

    async def _wait_ready(self, targets: list[ResourceRun], timeout: float | None) -> None:
        def done(run: ResourceRun) -> bool:
            return run.state in (S.HEALTHY, S.FINISHED) or (run.state == S.EXITED and self._expected_exit(run))

        def failed(run: ResourceRun) -> bool:
            if run.state == S.EXITED:
                return not self._expected_exit(run)
            return run.state in (S.FAILED_TO_START, S.STOPPED) or (run.state == S.NOT_STARTED and bool(run.last_error))

        def outcome() -> bool | None:
            if any(failed(run) for run in targets):
                return False
            if all(done(run) for run in targets):
                return True
            return None

        try:
            ready = await self._until(outcome, timeout)
        except asyncio.TimeoutError:
            raise StartupError(self._timeout_message(targets, timeout)) from None
        if not ready:
            # Let the dependents of the failed resource record why they were not started.
            await asyncio.sleep(0.05)
            root = self._root_failure(targets)
            raise StartupError(self._failure_message(root, targets), root.name)

    def _expected_exit(self, run: ResourceRun) -> bool:
        """Tell whether some resource waits for `run` to complete with the exit code it had."""
        return any(wait.resource is run.resource and wait.condition == "completed"
                   and wait.exit_code == run.exit_code
                   for other in self.stack.resources.values() for wait in other.waits)

    def _root_failure(self, targets: list[ResourceRun]) -> ResourceRun:
        for run in self.runs.values():
            if run.state == S.FAILED_TO_START or (run.state == S.EXITED and not self._expected_exit(run)):
                return run
        for run in targets:
            if run.state not in (S.HEALTHY, S.FINISHED):
                return run
        return targets[0]

    def _failure_message(self, root: ResourceRun, targets: list[ResourceRun]) -> str:
        what = {S.FAILED_TO_START: "failed to start", S.EXITED: "exited"}.get(root.state, f"is {root.state.value}")
        lines = [f"Resource `{root.name}` {what}: {root.last_error or 'no error recorded'}"]
        if root.tail:
            lines.append(f"Last log lines of `{root.name}`:")
            lines.extend(f"    {line}" for line in root.tail)
        skipped = [run.name for run in self.runs.values() if run.state == S.NOT_STARTED and run.last_error]
        if skipped:
            lines.append("Not started because of it: " + ", ".join(f"`{name}`" for name in skipped) + ".")
        lines.append("Inspect with stack.status() and stack.logs(); call stack.down() to stop the rest.")
        return self.mask("\n".join(lines))

    def _timeout_message(self, targets: list[ResourceRun], timeout: float | None) -> str:
        lines = [f"The stack `{self.stack.name}` was not ready within {timeout} s:"]
        for run in targets:
            if run.state in (S.HEALTHY, S.FINISHED):
                continue
            detail = f" ({run.health_detail})" if run.health_detail else ""
            if run.state == S.WAITING:
                pending = [f"`{wait.resource.name}` {'healthy' if wait.condition == 'healthy' else 'completed'}"
                           for wait in self._waits(run.resource) if self._wait_outcome(wait) is None]
                detail = f" for {', '.join(pending)}" if pending else ""
            lines.append(f"  `{run.name}` is {run.state.value}{detail}")
            lines.extend(f"      {line}" for line in list(run.tail)[-5:])
        lines.append("Check the health checks and logs, or pass a larger timeout to up().")
        return self.mask("\n".join(lines))

    async def down_async(self, volumes: bool = False, timeout: float = 10.0) -> None:
        """Stop every resource, dependents first; `volumes=True` also deletes persistent data."""
        self._sync_runs()
        await self._stop_many(list(self.runs), timeout)

        if self._launcher is not None:
            # Anything the stop missed goes through the state file; later changes no longer rewrite it.
            self._write_state()
            self._launcher = None
            if _state_owners.get(self.state_dir.root) is self:
                await run_blocking(stop_orphans, self.state_dir)
        await self._remove_stack_leftovers(volumes)
        if volumes:
            import shutil

            for resource in self.stack.resources.values():
                volume = getattr(resource, "data_volume", None)
                if volume and self.stack.runtime_for(resource) == "local":
                    shutil.rmtree(self.state_dir.volume(volume), ignore_errors=True)

    async def _remove_stack_leftovers(self, volumes: bool) -> None:
        """Let runtimes with stack-wide objects (the Docker network, named volumes) remove them."""
        for key, runtime in self._runtimes.items():
            remove_stack = getattr(runtime, "remove_stack", None)
            if remove_stack is None:
                continue
            try:
                await run_blocking(functools.partial(remove_stack, self.stack.name, volumes=volumes))
            except Exception as exc:  # noqa: BLE001 - the processes are stopped; report what is left
                logger.warning("The %s runtime failed to remove what stack `%s` left: %s", key, self.stack.name, exc)

    async def start_async(self, name: str, timeout: float | None = 120.0) -> None:
        """Start one resource (an explicit-start one, or one that stopped) and wait until it is ready."""
        run = self._run(name)
        if run.state in ACTIVE or (run.task is not None and not run.task.done()):
            raise StateError(f"Cannot start `{name}` while it is {run.state.value}.")

        # A server's databases follow it, so they start again with it.
        runs = [run] + [other for other in self.runs.values()
                        if other.resource.kind == "database" and other.resource.parent is run.resource
                        and other.state not in ACTIVE and not (other.task and not other.task.done())]

        self._check_cycles()
        self._allocate_ports(list(self.stack.resources.values()))
        self._preflight(runs)
        await self._prepare()
        for selected in runs:
            selected.last_error = None
            selected.state = S.NOT_STARTED
            selected.task = asyncio.ensure_future(self._run_resource(selected))
        await self._wait_ready(runs, timeout)

    async def stop_async(self, name: str, timeout: float = 10.0) -> None:
        """Stop one resource."""
        run = self._run(name)
        if run.state not in ACTIVE and not (run.task and not run.task.done()):
            raise StateError(f"Cannot stop `{name}` while it is {run.state.value}.")
        await self._stop_run(run, timeout)

    async def restart_async(self, name: str, timeout: float | None = 120.0) -> None:
        """Stop one resource, wait until its ports can be bound, and start it again."""
        run = self._run(name)
        if run.state == S.STOPPING:
            raise StateError(f"Cannot restart `{name}` while it is Stopping.")
        if run.state in ACTIVE or (run.task and not run.task.done()):
            await self._stop_run(run, 10.0)
        await self._wait_ports_free(run, timeout or 30.0)
        run.restarts += 1
        await self.start_async(name, timeout)

    # -- public API (sync)

    def up(self, wait: bool = True, timeout: float | None = 120.0, progress: bool | None = None) -> None:
        reporter = Progress.create(self, progress)
        future = _loop.submit(self.up_async(wait=wait, timeout=timeout))
        try:
            while True:
                try:
                    future.result(timeout=0.1)
                    break
                except TimeoutError:
                    reporter.refresh()
        except KeyboardInterrupt:
            future.cancel()
            raise
        finally:
            reporter.close()

    def down(self, volumes: bool = False, timeout: float = 10.0) -> None:
        _loop.run(self.down_async(volumes=volumes, timeout=timeout))

    def start(self, name: str, timeout: float | None = 120.0) -> None:
        _loop.run(self.start_async(name, timeout))

    def stop(self, name: str, timeout: float = 10.0) -> None:
        _loop.run(self.stop_async(name, timeout))

    def restart(self, name: str, timeout: float | None = 120.0) -> None:
        _loop.run(self.restart_async(name, timeout))

    # -- frames

    def status(self) -> pd.DataFrame:
        """Return one row per resource: name, type, state, health, endpoints, pid, started_at, ..."""
        import pandas as pd

        self._sync_runs()
        rows = []
        for run in self.runs.values():
            rows.append({
                "name": run.name,
                "type": run.resource.kind,
                "state": run.state.value,
                "health": run.health,
                "endpoints": ", ".join(self._endpoint_urls(run.resource).values()),
                "pid": run.pid if run.state in ACTIVE else None,
                "started_at": run.started_at,
                "exit_code": run.exit_code,
                "restarts": run.restarts,
                "last_error": run.last_error,
            })
        frame = pd.DataFrame(rows, columns=STATUS_COLUMNS)
        for column in ("pid", "exit_code", "restarts"):
            frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
        frame["started_at"] = pd.to_datetime(frame["started_at"], utc=True).astype("datetime64[ns, UTC]")
        for column in ("name", "type", "state", "health", "endpoints", "last_error"):
            frame[column] = frame[column].astype("string")
        return frame

    def logs(self, name: str | None = None, tail: int | None = None) -> pd.DataFrame:
        """Return console lines: time, resource, stream, line, plus the fields of JSON-object lines."""
        import pandas as pd

        if name is not None:
            self._run(name)
        with self._log_lock:
            rows = [row for row in self._logs if name is None or row[1] == name]
        if tail is not None:
            rows = rows[-tail:] if tail > 0 else []
        return log_frame(rows)

    def events(self) -> pd.DataFrame:
        """Return the state changes so far: time, resource, state, previous, message."""
        import pandas as pd

        frame = pd.DataFrame(
            [(e.time, e.resource, e.state.value, e.previous.value if e.previous else None, e.message)
             for e in self._events],
            columns=["time", "resource", "state", "previous", "message"],
        )
        frame["time"] = pd.to_datetime(frame["time"], utc=True).astype("datetime64[ns, UTC]")
        for column in ("resource", "state", "previous", "message"):
            frame[column] = frame[column].astype("string")
        return frame


class Progress:
    """Shows `up()` progress: one line per state change in a terminal, an updating table in a notebook.

    Events arrive on the loop thread and are queued; the thread that called `up()` prints or redraws.
    """

    def __init__(self, orchestrator: Orchestrator, mode: str | None) -> None:
        import queue

        self.orchestrator = orchestrator
        self.mode = mode
        self.queue: queue.SimpleQueue[ResourceEvent] = queue.SimpleQueue()
        self.unsubscribe = orchestrator.on_event(self.queue.put) if mode else (lambda: None)
        self.handle: Any = None
        if mode == "notebook":
            from IPython.display import HTML, display

            self.handle = display(HTML(self._table()), display_id=True)

    @classmethod
    def create(cls, orchestrator: Orchestrator, progress: bool | None) -> Progress:
        """Pick the display: a notebook table inside a kernel, lines on a terminal, else nothing."""
        if progress is False:
            return cls(orchestrator, None)
        if _in_notebook():
            return cls(orchestrator, "notebook")
        if progress or sys.stderr.isatty():
            return cls(orchestrator, "terminal")
        return cls(orchestrator, None)

    def refresh(self) -> None:
        changed = False
        while not self.queue.empty():
            event = self.queue.get()
            changed = True
            if self.mode == "terminal":
                message = f": {event.message}" if event.message else ""
                print(f"{event.time:%H:%M:%S} {event.resource:<28} {event.state.value}{message}",
                      file=sys.stderr, flush=True)
        if changed and self.handle is not None:
            from IPython.display import HTML

            self.handle.update(HTML(self._table()))

    def close(self) -> None:
        self.refresh()
        self.unsubscribe()

    def _table(self) -> str:
        import html

        rows = []
        for run in self.orchestrator.runs.values():
            urls = ", ".join(self.orchestrator._endpoint_urls(run.resource).values())
            error = run.last_error or ""
            rows.append(f"<tr><td>{html.escape(run.name)}</td><td>{run.state.value}</td>"
                        f"<td>{html.escape(urls)}</td><td>{html.escape(error[:200])}</td></tr>")
        return ("<table><thead><tr><th>resource</th><th>state</th><th>endpoints</th><th>error</th></tr>"
                "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and hasattr(shell, "kernel")


STATUS_COLUMNS = ["name", "type", "state", "health", "endpoints", "pid", "started_at", "exit_code", "restarts",
                  "last_error"]
LOG_COLUMNS = ["time", "resource", "stream", "line"]


def log_frame(rows: list[tuple[datetime, str, str, str]]) -> pd.DataFrame:
    """Build the logs frame, adding a column per top-level field of lines that are JSON objects."""
    import pandas as pd

    records = []
    for stamp, resource, stream, line in rows:
        record: dict[str, Any] = {"time": stamp, "resource": resource, "stream": stream, "line": line}
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                for key, value in parsed.items():
                    if key not in record:
                        record[key] = value
        records.append(record)

    frame = pd.DataFrame(records)
    for column in LOG_COLUMNS:
        if column not in frame:
            frame[column] = pd.Series(dtype="object")
    frame = frame[LOG_COLUMNS + [c for c in frame.columns if c not in LOG_COLUMNS]]
    frame["time"] = pd.to_datetime(frame["time"], utc=True).astype("datetime64[ns, UTC]")
    for column in ("resource", "stream", "line"):
        frame[column] = frame[column].astype("string")
    return frame


def port_available(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether a server could bind `host:port` now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_holder(port: int) -> int | None:
    """Return the pid listening on TCP `port`, when this user may see it."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return None
    for connection in connections:
        if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
            return connection.pid
    return None


def _check_paths(resource: Any) -> None:
    """Raise `ConfigurationError` when a file or directory the resource declares does not exist."""
    checks = [
        ("changelog", getattr(resource, "changelog", None), "Pass the path of a changelog file or folder."),
        ("script", getattr(resource, "script", None), "Pass an existing script, or a module name."),
        ("working directory", getattr(resource, "cwd", None), "Create it or pass another cwd."),
    ]
    for what, path, fix in checks:
        if path is not None and not Path(path).exists():
            raise ConfigurationError(f"The {what} {str(path)!r} of `{resource.name}` does not exist. {fix}")


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def _reason(run: ResourceRun) -> str:
    return f" ({run.last_error.rstrip('.')})" if run.last_error else ""


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, (ResourceError, ConfigurationError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


async def _result_or_none(future: asyncio.Future) -> Any:
    try:
        return await future
    except BaseException:  # noqa: BLE001 - only the handle matters here
        return None


async def _safe_probe(running: Running) -> bool | None:
    try:
        return await asyncio.wait_for(running.probe(), 5.0)
    except asyncio.TimeoutError:
        return False
    except Exception as exc:  # noqa: BLE001 - a failing probe means unhealthy
        logger.debug("Probe failed: %s", exc)
        return False
