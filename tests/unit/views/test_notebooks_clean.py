"""The committed notebooks carry no outputs, execution counts or saved widget state."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[3] / "notebooks"
NAMES = ("01_launch.ipynb", "02_traces.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_notebook_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [], f"{name} cell {cell.get('id')} has outputs; clear them before committing"
        assert cell.execution_count is None, f"{name} cell {cell.get('id')} has an execution count"
    assert "widgets" not in notebook.metadata


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_valid_and_names_kernel(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)

    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
