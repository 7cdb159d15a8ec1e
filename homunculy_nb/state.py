"""The state directory of a stack: the state file of what runs, console logs, data directories.

Layout under `Stack.state_dir`:

    state.json          launcher pid and start time, and one record per running resource
    logs/<name>.log     console output, one `time<TAB>stream<TAB>line` row per line, secrets masked
    run/                scratch space of the current run (non-persistent data directories)
    volumes/<volume>/   persistent data directories (`with_data_volume`)

The state file lets a later process (`up()` after a kernel crash, `homunculy-nb down`) stop what a
crashed launcher left behind. Each record names its runtime key and carries the runtime's
`state_record()`. For a process that is the pid, process group and start time, so a reused pid is left
alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from homunculy_nb.runtimes.base import find_runtime

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"


class StateDir:
    """Paths and the state file of one stack."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def volumes_dir(self) -> Path:
        return self.root / "volumes"

    def log_file(self, resource: str) -> Path:
        return self.logs_dir / f"{resource}.log"

    def volume(self, name: str) -> Path:
        return self.volumes_dir / name

    def prepare(self) -> None:
        """Create the directories; the logs are private to the user since they may contain settings.

        The others stay searchable, because a PostgreSQL server run as another OS user (when the
        caller is root) must reach its data directory below them.
        """
        for path in (self.root, self.run_dir, self.volumes_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(exist_ok=True, mode=0o700)

    def read(self) -> dict[str, Any]:
        """Return the state file's content, or an empty dict when there is none or it is unreadable."""
        try:
            return json.loads(self.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("Ignoring unreadable state file %s: %s", self.state_file, exc)
            return {}

    def write(self, state: dict[str, Any]) -> None:
        """Replace the state file atomically."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".state-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(state, handle, indent=1, default=str)
            os.replace(temporary, self.state_file)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        self.state_file.unlink(missing_ok=True)


def launcher_record(kind: str = "python") -> dict[str, Any]:
    """Describe the current process as the stack's launcher: "cli" for `homunculy-nb up`, else "python"."""
    from homunculy_nb.runtimes.process import process_start_time

    return {"pid": os.getpid(), "create_time": process_start_time(os.getpid()), "kind": kind,
            "written": time.time()}


def launcher_alive(state: dict[str, Any]) -> int | None:
    """Return the launcher's pid when the process that wrote `state` still runs (and is not us)."""
    from homunculy_nb.runtimes.process import process_start_time

    launcher = state.get("launcher") or {}
    pid = launcher.get("pid")
    if not pid or pid == os.getpid():
        return None

    started = process_start_time(pid)
    recorded = launcher.get("create_time")
    if started is None or recorded is None or abs(started - recorded) > 1.0:
        return None
    return pid


def stop_orphans(state_dir: StateDir, resources: list[str] | None = None) -> list[str]:
    """Stop the resources recorded in the state file and drop their records; return the stopped names.

    With `resources`, only those names are stopped. Records whose runtime is not installed stay.
    """
    state = state_dir.read()
    records: dict[str, Any] = state.get("resources", {})
    stopped = []

    for name, entry in list(records.items()):
        if resources is not None and name not in resources:
            continue
        record = entry.get("record")
        runtime = find_runtime(entry.get("runtime", "process"))
        if runtime is None:
            logger.warning("Cannot stop orphaned `%s`: runtime %r is not available", name, entry.get("runtime"))
            continue

        if record:
            try:
                if runtime.stop_orphan(record):
                    stopped.append(name)
            except Exception:  # noqa: BLE001 - one failing cleanup must not keep the others running
                logger.exception("Failed to stop orphaned `%s`", name)
                continue
        del records[name]

    if records:
        state["resources"] = records
        state_dir.write(state)
    else:
        state_dir.clear()
    return stopped
