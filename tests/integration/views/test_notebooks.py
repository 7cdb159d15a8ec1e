"""Both notebooks run headless through `python -m homunculy_nb.demo` on free ports, and clean up after."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[3]


def processes_mentioning(text: str) -> list[int]:
    """Return the pids whose command line contains `text`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            pids.append(int(entry.name))
    return pids


def error_outputs(notebook) -> list[str]:
    return [f"{output.ename}: {output.evalue}" for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if output.output_type == "error"]


@pytest.mark.integration
def test_demo_executes_both_notebooks(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"),
           "HOMUNCULY_NB_SECRETS_FILE": str(tmp_path / "secrets.json"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

    result = subprocess.run([sys.executable, "-m", "homunculy_nb.demo", "--ports", "auto", "--run-dir", str(run_dir),
                             "--timeout", "600"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=1500)

    assert result.returncode == 0, result.stderr[-4000:]
    for name in ("01_launch", "02_traces"):
        executed = nbformat.read(run_dir / "notebooks" / f"{name}.ipynb", as_version=4)
        assert error_outputs(executed) == []
        assert all(cell.execution_count for cell in executed.cells if cell.cell_type == "code")
        html_path = run_dir / "notebooks" / f"{name}.html"
        html = html_path.read_text(encoding="utf-8")
        assert "Plotly.newPlot" in html
        assert html_path.stat().st_size < 12_000_000

    turns = pd.read_parquet(run_dir / "turns.parquet")
    assert len(turns) == 16
    assert turns["error_code"].isna().all()
    assert (run_dir / "telemetry").is_dir()
    assert (run_dir / "chat.md").is_file()

    status = pd.read_csv(run_dir / "status.csv")
    assert set(status["name"]) >= {"homunculy-postgres", "homunculy-app", "management-app"}
    assert processes_mentioning(str(tmp_path)) == []


def test_demo_rejects_unknown_ports():
    from homunculy_nb.demo import run_demo

    with pytest.raises(ValueError, match="Invalid ports='fixed'"):
        run_demo(ports="fixed")


def test_demo_names_missing_notebooks(tmp_path):
    from homunculy_nb.demo import run_demo

    with pytest.raises(FileNotFoundError, match="01_launch.ipynb, 02_traces.ipynb are not in"):
        run_demo(tmp_path / "run", ports="auto", notebooks_dir=tmp_path)
