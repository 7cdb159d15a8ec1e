"""Local processes: executables, Python scripts and modules, uvicorn apps, migrations.

Each process starts in its own session, so it leads a new process group. Stopping sends SIGTERM to the
whole group and SIGKILL after a timeout, so grandchildren (uvicorn workers, shell pipelines) end too. A
grandchild that starts a session of its own leaves the group and is not reached.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from typing import Any

from homunculy_nb.errors import ResourceError, RuntimeUnavailableError
from homunculy_nb.runtimes.base import Launch, OutputCallback, Running, Runtime, register_runtime

logger = logging.getLogger(__name__)

# Maximum length in bytes of a console line kept whole; longer lines are split.
LINE_LIMIT = 1 << 20
# Seconds to wait for the group to die after SIGKILL before giving up.
KILL_GRACE = 5.0


async def run_blocking(function, *args):
    """Run a blocking call in a worker thread, or inline once the interpreter is shutting down.

    At exit the default executor accepts no new work, but the `atexit` hook must still stop the stack.
    """
    try:
        return await asyncio.to_thread(function, *args)
    except RuntimeError as exc:
        if "shutdown" not in str(exc):
            raise
        return function(*args)


def process_start_time(pid: int) -> float | None:
    """Return the start time of `pid` (seconds since the epoch), or None when it is gone or a zombie."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def group_members(pgid: int) -> list[int]:
    """Return the live pids in process group `pgid`."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getpgid(process.info["pid"]) == pgid:
                members.append(process.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to process group `pgid`; return False when the group is gone."""
    try:
        os.killpg(pgid, signum)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        logger.warning("Not allowed to signal process group %d", pgid)
        return False


class ProcessRunning(Running):
    """A started process and its group."""

    def __init__(self, process: asyncio.subprocess.Process, name: str, on_output: OutputCallback) -> None:
        self.process = process
        self.name = name
        self.pid = process.pid
        self.pgid = process.pid
        self.started = process_start_time(process.pid) or time.time()
        self._readers = [
            asyncio.ensure_future(_pump(process.stdout, "stdout", on_output)),
            asyncio.ensure_future(_pump(process.stderr, "stderr", on_output)),
        ]

    async def wait(self) -> int:
        code = await self.process.wait()
        # Let the readers deliver the last lines before the exit is reported.
        await asyncio.wait(self._readers, timeout=2.0)
        return code

    async def stop(self, timeout: float = 10.0) -> int | None:
        # 1. Ask the whole group to terminate.
        signal_group(self.pgid, signal.SIGTERM)

        # 2. Wait for the leader, then force the group.
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except asyncio.TimeoutError:
            logger.warning("`%s` (pid %d) did not exit %.1f s after SIGTERM; sending SIGKILL",
                           self.name, self.pid, timeout)
            signal_group(self.pgid, signal.SIGKILL)
            await self.process.wait()

        # 3. Members that outlived the leader (a grandchild ignoring SIGTERM) get SIGKILL too.
        if await run_blocking(group_members, self.pgid):
            signal_group(self.pgid, signal.SIGKILL)
            await _wait_group_gone(self.pgid, KILL_GRACE)

        await asyncio.wait(self._readers, timeout=2.0)
        return self.process.returncode

    def state_record(self) -> dict[str, Any]:
        return {"pid": self.pid, "pgid": self.pgid, "create_time": self.started}


async def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not await run_blocking(group_members, pgid):
            return True
        await asyncio.sleep(0.05)
    return False


async def _pump(stream: asyncio.StreamReader | None, name: str, on_output: OutputCallback) -> None:
    if stream is None:
        return
    while True:
        try:
            line = await stream.readline()
        except ValueError:
            # The line exceeded LINE_LIMIT: deliver what is buffered and carry on.
            line = await stream.read(LINE_LIMIT)
        if not line:
            return
        try:
            on_output(name, line.decode("utf-8", errors="replace").rstrip("\r\n"))
        except Exception:  # noqa: BLE001 - a failing subscriber must not stop the output
            logger.exception("Output callback failed for %s", name)


class ProcessRuntime(Runtime):
    """Starts `launch.command` as a process group leader with `launch.env` added to this process's environment."""

    def check_available(self, launch: Launch) -> None:
        if not launch.command:
            raise RuntimeUnavailableError(f"`{launch.name}` has no command to run.", launch.name)
        program = launch.command[0]
        if os.sep in program:
            found = os.access(program, os.X_OK)
        else:
            found = shutil.which(program) is not None
        if not found:
            raise RuntimeUnavailableError(
                f"Cannot start `{launch.name}`: program {program!r} was not found or is not executable. "
                "Install it or pass the full path as the command.",
                launch.name,
            )

    async def start(self, launch: Launch) -> ProcessRunning:
        env = {**os.environ, **launch.env}
        try:
            process = await asyncio.create_subprocess_exec(
                *launch.command,
                cwd=str(launch.cwd) if launch.cwd else None,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            raise ResourceError(
                f"Failed to start `{launch.name}` ({launch.command[0]}): {exc.strerror or exc}.", launch.name
            ) from exc

        logger.info("Started `%s` with pid %d", launch.name, process.pid)
        return ProcessRunning(process, launch.name, launch.on_output)

    @classmethod
    def stop_orphan(cls, record: dict[str, Any]) -> bool:
        """Stop the group of a process left behind, if the pid still belongs to the recorded process."""
        pid, pgid, started = record.get("pid"), record.get("pgid"), record.get("create_time")
        if not pid or not pgid:
            return False

        # A reused pid has a different start time; only members started after the leader count.
        current = process_start_time(pid)
        if current is not None and started is not None and abs(current - started) > 1.0:
            return False
        members = [member for member in group_members(pgid)
                   if (process_start_time(member) or 0) >= (started or 0) - 1.0]
        if not members:
            return False

        signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.05)
        if group_members(pgid):
            signal_group(pgid, signal.SIGKILL)
        logger.info("Stopped orphaned process group %d (pid %d)", pgid, pid)
        return True


register_runtime("process", ProcessRuntime)
