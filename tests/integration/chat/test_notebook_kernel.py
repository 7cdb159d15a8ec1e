"""The chat client in a real Jupyter kernel, whose cells run inside the kernel's own event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sync_and_async_cells_in_kernel(chat_url):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    cells = [
        f"import sys\nsys.path.insert(0, {str(REPO_ROOT)!r})\nfrom homunculy_nb.chat import ChatClient",
        # A plain (sync) call in a cell: the kernel's loop is running while it blocks.
        f"with ChatClient({chat_url!r}) as chat:\n    turn = chat.send('Hello from a cell')\n"
        "print('sync', turn.completed, bool(turn.text))",
        # Top-level await: the cell itself runs as a coroutine on the kernel's loop.
        f"async with ChatClient({chat_url!r}) as chat:\n    turn = await chat.send_async('Hello again')\n"
        "print('async', turn.completed, bool(turn.text))",
        f"import asyncio\nasync def main():\n    async with ChatClient({chat_url!r}) as chat:\n"
        "        return [event.type async for event in chat.stream_async('Stream please')]\n"
        "types = await main()\nprint('stream', types[-1])",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])

    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()

    outputs = ["".join(output.get("text", "") for output in cell.outputs) for cell in notebook.cells]
    assert outputs[1] == "sync True True\n"
    assert outputs[2] == "async True True\n"
    assert outputs[3] == "stream complete\n"
