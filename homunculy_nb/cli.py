"""The `homunculy-nb` command: run a stack file from a terminal, inspect it, manage secrets.

A stack file is a Python module that defines `stack` (a `homunculy_nb.Stack`). Commands that inspect a
running stack (`down`, `status`, `logs`) take the stack file, its state directory or its name; without
one they use the stack that `homunculy-nb up` launched last.
"""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from homunculy_nb.errors import ConfigurationError, HomunculyError

logger = logging.getLogger(__name__)


# -- locating a stack -------------------------------------------------------------------------


def load_stack_file(path: str | os.PathLike) -> Any:
    """Import the stack file at `path` and return its `stack`."""
    from homunculy_nb.stack import Stack

    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigurationError(f"Stack file {str(path)!r} was not found. Pass the path of a Python file "
                                 "that defines `stack`.")

    spec = importlib.util.spec_from_file_location(f"homunculy_stackfile_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    stack = getattr(module, "stack", None)
    if not isinstance(stack, Stack):
        raise ConfigurationError(f"Stack file {str(path)!r} must define `stack = Stack(...)`; found {stack!r}.")
    return stack


def _last_pointer() -> Path:
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "homunculy-nb" / "last-stack"


def _remember(state_dir: Path) -> None:
    pointer = _last_pointer()
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(state_dir) + "\n", encoding="utf-8")
    except OSError as exc:
        logger.debug("Cannot record the last stack in %s: %s", pointer, exc)


def resolve_state_dir(target: str | None) -> Path:
    """Return the state directory for a stack file, a state directory, a stack name, or the last stack."""
    from homunculy_nb.stack import default_state_dir

    if target is None:
        pointer = _last_pointer()
        if not pointer.exists():
            raise ConfigurationError("No stack given and none launched before. Pass a stack file, "
                                     "state directory or stack name.")
        return Path(pointer.read_text(encoding="utf-8").strip())

    path = Path(target).expanduser()
    if path.suffix == ".py" and path.is_file():
        return load_stack_file(path).state_dir
    if path.is_dir():
        return path.resolve()
    return default_state_dir(target)


# -- commands -----------------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    stack = load_stack_file(args.stackfile)
    orchestrator = stack.orchestrator
    orchestrator.launcher_kind = "cli"
    _remember(stack.state_dir)

    stopping = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        stopping.set()

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        stack.up(timeout=args.timeout, progress=True)
        # Keep printing state changes, so a resource that exits after up() returned is not missed.
        stack.on_event(_print_event)
        status = stack.status()
        print(status[["name", "type", "state", "endpoints", "pid"]].to_string(index=False))
        # A resource without a health check counts as healthy once started, so one that crashes at once
        # can already have exited here.
        for row in status[status["state"].isin(["Exited", "FailedToStart"])].itertuples():
            print(f"warning: `{row.name}` is {row.state}: {str(row.last_error).rstrip('.')}. See "
                  f"`homunculy-nb logs {row.name}`.",
                  file=sys.stderr, flush=True)
        print("The stack is up. Press Ctrl+C to stop it.", file=sys.stderr, flush=True)

        if not args.no_logs:
            stack.on_log(lambda stamp, resource, stream, line: print(f"{resource:<24} | {line}", flush=True))
        while not stopping.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping the stack...", file=sys.stderr, flush=True)
        stack.down()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _print_event(event: Any) -> None:
    message = f": {event.message}" if event.message else ""
    print(f"{event.time:%H:%M:%S} {event.resource:<28} {event.state.value}{message}", file=sys.stderr, flush=True)


def cmd_down(args: argparse.Namespace) -> int:
    from homunculy_nb.state import StateDir, launcher_alive, stop_orphans

    state_dir = StateDir(resolve_state_dir(args.stack))
    state = state_dir.read()
    if not state:
        print(f"Nothing runs for {state_dir.root}.")
        # The data directories outlive the processes, so `down --volumes` after a plain `down` still removes them.
        if args.volumes:
            _remove_volumes(state_dir)
        return 0

    # A foreground `homunculy-nb up` stops its own stack in order when asked to.
    launcher = launcher_alive(state)
    if launcher is not None and (state.get("launcher") or {}).get("kind") == "cli":
        os.kill(launcher, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and launcher_alive(state_dir.read() or state) is not None:
            time.sleep(0.1)

    stopped = stop_orphans(state_dir)
    for name in stopped:
        print(f"Stopped {name}")
    if args.volumes:
        _remove_volumes(state_dir)
    return 0


def _remove_volumes(state_dir: Any) -> None:
    import shutil

    if not state_dir.volumes_dir.exists():
        print(f"No data directories in {state_dir.volumes_dir}.")
        return
    shutil.rmtree(state_dir.volumes_dir, ignore_errors=True)
    print(f"Removed data directories in {state_dir.volumes_dir}")


def cmd_status(args: argparse.Namespace) -> int:
    import pandas as pd

    from homunculy_nb.runtimes.process import process_start_time
    from homunculy_nb.state import StateDir, launcher_alive

    state_dir = StateDir(resolve_state_dir(args.stack))
    state = state_dir.read()
    if not state:
        print(f"Nothing runs for {state_dir.root}.")
        return 0

    alive = launcher_alive(state) is not None
    rows = []
    for name, entry in state.get("resources", {}).items():
        status = entry.get("state")
        if not alive and status not in ("Finished", "Exited", "FailedToStart", "Stopped", "NotStarted"):
            pid = (entry.get("record") or {}).get("pid")
            status = f"{status} (launcher gone)" if pid and process_start_time(pid) else "Stopped"
        rows.append({"name": name, "type": entry.get("kind"), "state": status, "health": entry.get("health"),
                     "endpoints": ", ".join((entry.get("endpoints") or {}).values()), "pid": entry.get("pid"),
                     "exit_code": entry.get("exit_code"), "last_error": entry.get("last_error")})

    # pandas stores an integer column with a missing value as float and would print "1234.0", so the
    # integer columns are nullable integers and missing text prints as an empty string.
    frame = pd.DataFrame(rows).astype({"pid": "Int64", "exit_code": "Int64"})
    text_columns = ["health", "endpoints", "last_error"]
    frame[text_columns] = frame[text_columns].astype(object).where(frame[text_columns].notna(), "")
    print(f"Stack `{state.get('stack')}` ({state_dir.root})")
    print(frame.to_string(index=False, na_rep=""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from homunculy_nb.state import StateDir

    state_dir = StateDir(resolve_state_dir(args.stack))
    path = state_dir.log_file(args.name)
    if not path.exists():
        known = sorted(p.stem for p in state_dir.logs_dir.glob("*.log")) if state_dir.logs_dir.exists() else []
        raise ConfigurationError(f"No console log for `{args.name}` in {state_dir.logs_dir}. "
                                 f"Resources with logs: {', '.join(known) or 'none'}.")

    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.readlines()
        if args.tail is not None:
            lines = lines[-args.tail:] if args.tail > 0 else []
        for line in lines:
            _print_log_line(line)
        if not args.follow:
            return 0

        try:
            _follow(path, handle)
        except KeyboardInterrupt:
            return 0
    return 0


def _follow(path: Path, handle: Any) -> None:
    """Print lines appended to the log file until interrupted.

    A new launch of the stack rewrites the file from the start, so a file shorter than what was read,
    or a new file at the path, is read again from its first line. A line is printed once it is complete.
    """
    partial = ""
    while True:
        chunk = handle.readline()
        if chunk:
            partial += chunk
            if partial.endswith("\n"):
                _print_log_line(partial)
                partial = ""
            continue

        try:
            current = os.stat(path)
        except FileNotFoundError:
            time.sleep(0.2)
            continue
        if current.st_ino != os.fstat(handle.fileno()).st_ino:
            handle.close()
            handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - reopened in the loop
            partial = ""
        elif current.st_size < handle.buffer.tell():
            handle.seek(0)
            partial = ""
        else:
            time.sleep(0.2)


def _print_log_line(raw: str) -> None:
    stamp, _, rest = raw.rstrip("\n").partition("\t")
    stream, _, line = rest.partition("\t")
    print(f"{stamp[11:23]} {stream:<6} {line}", flush=True)


def cmd_secrets(args: argparse.Namespace) -> int:
    from homunculy_nb import parameters

    if args.action == "set":
        value = args.value
        if value is None:
            value = getpass.getpass(f"Value for {args.name}: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        parameters.set_secret(args.stack, args.name, value)
        print(f"Stored `{args.name}` for stack `{args.stack}` in {parameters.secrets_file()}")
    elif args.action == "list":
        for stack_name, names in parameters.list_secrets(args.stack).items():
            for name in names:
                print(f"{stack_name}\t{name}")
    else:
        if not parameters.remove_secret(args.stack, args.name):
            print(f"Stack `{args.stack}` has no stored `{args.name}`.", file=sys.stderr)
            return 1
        print(f"Removed `{args.name}` of stack `{args.stack}`.")
    return 0


def cmd_collector(args: argparse.Namespace) -> int:
    from homunculy_nb.collector import serve

    options = {"api_key": args.api_key} if args.api_key else {}
    serve(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port, save_to=args.save_to, **options)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    stack = load_stack_file(args.stackfile)
    for path in stack.publish(args.target, args.out):
        print(path)
    return 0


# -- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="homunculy-nb", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="start a stack file and keep it running until Ctrl+C")
    up.add_argument("stackfile", help="Python file that defines `stack`")
    up.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every resource (default 300)")
    up.add_argument("--no-logs", action="store_true", help="do not print console output once up")
    up.set_defaults(handler=cmd_up)

    stack_help = "stack file, state directory or stack name (default: the last one started)"
    down = commands.add_parser("down", help="stop a stack, also one left behind by a crashed process")
    down.add_argument("stack", nargs="?", help=stack_help)
    down.add_argument("--volumes", action="store_true", help="also delete persistent data directories")
    down.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the launcher (default 30)")
    down.set_defaults(handler=cmd_down)

    status = commands.add_parser("status", help="show the resources of a stack")
    status.add_argument("stack", nargs="?", help=stack_help)
    status.set_defaults(handler=cmd_status)

    logs = commands.add_parser("logs", help="print the console output of a resource")
    logs.add_argument("name", help="resource name")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("--tail", type=int, default=None, help="print only the last N lines")
    logs.add_argument("--stack", default=None, help=stack_help)
    logs.set_defaults(handler=cmd_logs)

    secrets = commands.add_parser("secrets", help="manage parameter values in the user secrets file")
    actions = secrets.add_subparsers(dest="action", required=True, metavar="ACTION")
    secret_set = actions.add_parser("set", help="store a value (read from a prompt or stdin when omitted)")
    secret_set.add_argument("stack")
    secret_set.add_argument("name")
    secret_set.add_argument("value", nargs="?")
    secret_list = actions.add_parser("list", help="list stored parameter names (never values)")
    secret_list.add_argument("stack", nargs="?")
    secret_remove = actions.add_parser("remove", help="remove a stored value")
    secret_remove.add_argument("stack")
    secret_remove.add_argument("name")
    secrets.set_defaults(handler=cmd_secrets)

    collector = commands.add_parser("collector", help="run the OTLP collector until Ctrl+C, then save")
    collector.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    collector.add_argument("--grpc-port", type=int, default=4317, help="OTLP/gRPC port (default 4317)")
    collector.add_argument("--http-port", type=int, default=4318, help="OTLP/HTTP port (default 4318)")
    collector.add_argument("--save-to", default=None, help="directory to save the telemetry to on exit")
    collector.add_argument("--api-key", default=None,
                           help="require this key in the x-otlp-api-key header (default: no key)")
    collector.set_defaults(handler=cmd_collector)

    publish = commands.add_parser("publish", help="write Docker Compose or Kubernetes files for a stack file")
    publish.add_argument("stackfile", help="Python file that defines `stack`")
    publish.add_argument("--target", required=True, choices=["compose", "kubernetes"])
    publish.add_argument("--out", required=True, help="output directory")
    publish.set_defaults(handler=cmd_publish)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except HomunculyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
