"""Run both notebooks headless and keep what they produced: `python -m homunculy_nb.demo`.

The demo executes `notebooks/01_launch.ipynb` (start the collector and the Homunculy stack, chat, load,
save the run, stop the stack) and then `notebooks/02_traces.ipynb` on the run it saved, with nbclient.
Under the run directory it writes the telemetry and turns (from the first notebook) and, in
`notebooks/`, the executed copies and their HTML exports.

The notebooks read their settings from environment variables, which the demo sets for the kernel:
`HOMUNCULY_NB_RUN_DIR` (this run's directory), `HOMUNCULY_NB_PORTS` (`default` or `auto`) and
`PLOTLY_RENDERER` (figures carry HTML with plotly.js embedded, so the exported HTML shows them offline).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from homunculy_nb.errors import HomunculyError

logger = logging.getLogger(__name__)

NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ("01_launch.ipynb", "02_traces.ipynb")
PLOTLY_RENDERER = "plotly_mimetype+notebook"


class NotebookFailedError(HomunculyError):
    """Raised when a demo notebook stops on an error; names the notebook, the cell and the error."""


def runs_root() -> Path:
    """Return the folder of saved runs: `$XDG_STATE_HOME/homunculy-nb/runs`, by default under `~/.local/state`."""
    state_home = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state_home / "homunculy-nb" / "runs"


def new_run_dir() -> Path:
    """Return a new run directory under `runs_root()`, named by the current UTC time."""
    return runs_root() / pd.Timestamp.now(tz="UTC").strftime("%Y%m%dT%H%M%SZ")


def run_demo(run_dir: str | os.PathLike | None = None, ports: str = "default", timeout: float = 900,
             notebooks_dir: str | os.PathLike | None = None) -> Path:
    """Execute both notebooks into `run_dir` (a new one by default) and return it.

    Each notebook's executed copy and HTML export are written even when a cell fails, so the failure
    can be read there; then `NotebookFailedError` is raised. `timeout` bounds each cell in seconds.
    """
    if ports not in ("default", "auto"):
        raise ValueError(f"Invalid ports={ports!r}: use \"default\" (the well-known ports) or \"auto\" (free ports).")
    source = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS_DIR
    missing = [name for name in NOTEBOOKS if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"The notebooks {', '.join(missing)} are not in {source}. Run the demo from a source checkout "
            "(`make demo`) or pass `notebooks_dir`."
        )

    run_dir = Path(run_dir) if run_dir is not None else new_run_dir()
    output_dir = run_dir / "notebooks"
    output_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOMUNCULY_NB_RUN_DIR": str(run_dir), "HOMUNCULY_NB_PORTS": ports,
           "PLOTLY_RENDERER": PLOTLY_RENDERER}

    for name in NOTEBOOKS:
        logger.info("Executing %s", name)
        execute_notebook(source / name, output_dir / name, env, timeout, cwd=source)
    return run_dir


def execute_notebook(path: Path, output: Path, env: dict[str, str], timeout: float, cwd: Path) -> None:
    """Execute the notebook at `path` with nbclient, then write it to `output` and its HTML next to it."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    # Widget state is not stored: each plotly FigureWidget's state carries plotly.js (several MB), and
    # static HTML cannot run the widgets anyway, so the copies show the widgets' text form instead.
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(cwd)}})
    failure: CellExecutionError | None = None
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        failure = exc
    finally:
        nbformat.write(notebook, output)
        write_html(notebook, output.with_suffix(".html"))

    if failure is not None:
        raise NotebookFailedError(
            f"{path.name} failed; the executed copy is {output}.\n{failure}"
        ) from failure


def write_html(notebook: object, path: Path) -> None:
    """Export an executed notebook to HTML at `path`."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(notebook)
    path.write_text(body, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the demo and print where its files are."""
    parser = argparse.ArgumentParser(prog="python -m homunculy_nb.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="directory for this run (default: a new folder under "
                             "$XDG_STATE_HOME/homunculy-nb/runs)")
    parser.add_argument("--ports", choices=("default", "auto"), default="default",
                        help="'default' binds the well-known ports (4317, 4318, 5433, 5434, 8000, 8080); "
                             "'auto' picks free ports")
    parser.add_argument("--timeout", type=float, default=900, help="maximum seconds per cell (default: 900)")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        run_dir = run_demo(arguments.run_dir, arguments.ports, arguments.timeout)
    except (NotebookFailedError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    print(f"Run directory: {run_dir}")
    for name in NOTEBOOKS:
        print(f"  {run_dir / 'notebooks' / name}")
        print(f"  {run_dir / 'notebooks' / Path(name).with_suffix('.html')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
