"""`Stack.up()` inside a Jupyter kernel: the sync API works on a kernel and shows a progress table."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]


def test_up_in_notebook_shows_progress_table(tmp_path, state_root):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"""
import os, sys
sys.path.insert(0, {str(REPO)!r})
os.environ["HOMUNCULY_NB_SECRETS_FILE"] = {str(tmp_path / "secrets.json")!r}
from homunculy_nb.stack import Stack
stack = Stack("nb", state_dir={str(state_root / "state")!r})
stack.add_executable("greeter", "sh", ["-c", "echo hello"])
stack.up()
print(stack.status().state.tolist())
stack.down()
""")]

    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute(cwd=str(tmp_path))

    outputs = notebook.cells[0].outputs
    html = [output["data"]["text/html"] for output in outputs if output.get("output_type") == "display_data"]
    text = "".join(output.get("text", "") for output in outputs if output.get("output_type") == "stream")
    assert html
    assert "<td>greeter</td>" in html[0]
    assert "['Healthy']" in text or "['Finished']" in text
