"""Time `up()` of the example stack against its critical path, cold and warm.

    python benchmarks/stack_startup.py [--stack examples/two_databases.py] [--rounds 3]

Cold: no data directories, so each PostgreSQL server creates a new cluster and every migration runs.
Warm: the data directories of the cold run are kept and the migrations find nothing to apply.

The baseline is measured in the same run: each resource started alone (`stack.start(name)` in
dependency order, nothing else starting), timed from its Starting event to its Healthy or Finished
event. The critical path is the longest chain of those times through the waits. The figure is `up()` time divided by that critical path; 1.0 means the orchestrator
adds nothing to the slowest chain. The reported values are medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from homunculy_nb.cli import load_stack_file  # noqa: E402


def dependency_order(stack) -> list[str]:
    """Return resource names with every resource after the resources it waits for."""
    orchestrator = stack.orchestrator
    ordered: list[str] = []

    def visit(resource) -> None:
        if resource.name in ordered:
            return
        for wait in orchestrator._waits(resource):
            visit(wait.resource)
        ordered.append(resource.name)

    for resource in stack.resources.values():
        visit(resource)
    return ordered


def critical_path(stack, durations: dict[str, float]) -> tuple[float, list[str]]:
    """Return the longest chain of `durations` through the waits, and the chain itself."""
    orchestrator = stack.orchestrator
    best: dict[str, tuple[float, list[str]]] = {}
    for name in dependency_order(stack):
        resource = stack.resources[name]
        before = max((best[wait.resource.name] for wait in orchestrator._waits(resource)),
                     default=(0.0, []), key=lambda item: item[0])
        best[name] = (before[0] + durations[name], [*before[1], name])
    return max(best.values(), key=lambda item: item[0])


def own_start_time(stack, name: str) -> float:
    """Return the seconds from the resource's last Starting event to its next Healthy or Finished one."""
    events = stack.events()
    events = events[events.resource == name]
    starting = events[events.state == "Starting"].time.iloc[-1]
    ready = events[(events.time >= starting) & events.state.isin(["Healthy", "Finished"])].time.iloc[0]
    return (ready - starting).total_seconds()


def load(stack_file: Path, state_dir: Path):
    stack = load_stack_file(stack_file)
    stack.state_dir = state_dir
    return stack


def time_alone(stack_file: Path, state_dir: Path) -> tuple[float, list[str], dict[str, float]]:
    """Start each resource alone, in dependency order, and return the critical path of their times."""
    stack = load(stack_file, state_dir)
    for resource in stack.resources.values():
        resource.explicit_start = True

    durations = {}
    try:
        stack.up(progress=False)
        for name in dependency_order(stack):
            if stack.resources[name].kind == "database":
                # Ready with its server, which start() brought up together with its databases.
                durations[name] = 0.0
                continue
            stack.start(name, timeout=120)
            durations[name] = own_start_time(stack, name)
    finally:
        stack.down()
    total, chain = critical_path(stack, durations)
    return total, chain, durations


def time_up(stack_file: Path, state_dir: Path) -> float:
    stack = load(stack_file, state_dir)
    try:
        started = time.perf_counter()
        stack.up(timeout=120, progress=False)
        return time.perf_counter() - started
    finally:
        stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", default=str(REPO / "examples" / "two_databases.py"), help="stack file")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement (default 3)")
    args = parser.parse_args()
    stack_file = Path(args.stack).resolve()

    scratch = Path(tempfile.mkdtemp(prefix="hnb-bench-"))
    os.chmod(scratch, 0o755)
    os.environ["HOMUNCULY_NB_SECRETS_FILE"] = str(scratch / "secrets.json")
    results: dict[str, list[float]] = {"cold up": [], "cold path": [], "warm up": [], "warm path": []}
    chains: dict[str, list[str]] = {}
    try:
        for round_number in range(args.rounds):
            # Cold baseline and cold up() each get a state directory with no data yet; warm runs reuse
            # it. Odd rounds measure up() first, so neither side always runs on a cooler machine.
            alone_dir = scratch / f"alone-{round_number}"
            up_dir = scratch / f"up-{round_number}"
            for phase in ("cold", "warm"):
                steps = [("path", alone_dir), ("up", up_dir)]
                if round_number % 2:
                    steps.reverse()
                for what, state_dir in steps:
                    if what == "path":
                        path, chains[phase], _ = time_alone(stack_file, state_dir)
                        results[f"{phase} path"].append(path)
                    else:
                        results[f"{phase} up"].append(time_up(stack_file, state_dir))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"stack: {stack_file.name}, rounds: {args.rounds}, cpus: {os.cpu_count()}")
    for phase, target in (("cold", 1.5), ("warm", 1.25)):
        up, path = median[f"{phase} up"], median[f"{phase} path"]
        print(f"{phase}: up() {up:.2f} s, critical path {path:.2f} s ({' -> '.join(chains[phase])}), "
              f"ratio {up / path:.2f} (target <= {target})")
    print(f"cold up() under 3 s: {'yes' if median['cold up'] < 3.0 else 'no'} ({median['cold up']:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
