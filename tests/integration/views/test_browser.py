"""JupyterLab in headless Chromium: run every cell of 01_launch.ipynb and check the widgets and figures rendered.

JupyterLab listens on 127.0.0.1 on a free port with a token; Debian's /usr/bin/chromium is driven by
Playwright (no browser is downloaded). The screenshot is written to the notebook's run directory and,
when `HOMUNCULY_NB_ARTIFACTS_DIR` is set, copied there for CI.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RESOURCES = ("homunculy-postgres", "homunculy-migrations", "homunculy-app", "management-app")

# JupyterLab settings for the test: every cell stays in the page (no windowed rendering), and no news
# prompt covers the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}

KERNEL_IDLE = """() => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const kernel = panel && panel.sessionContext && panel.sessionContext.session
        && panel.sessionContext.session.kernel;
    return Boolean(kernel) && kernel.status === "idle";
}"""
SELECT_LAST_CELL = """() => {
    const notebook = window.jupyterapp.shell.currentWidget.content;
    notebook.activeCellIndex = notebook.widgets.length - 1;
}"""
# Insert a cell showing the dashboard a second time, above the last cell, and run it.
SHOW_DASHBOARD_AGAIN = """async () => {
    const app = window.jupyterapp;
    await app.commands.execute("notebook:insert-cell-above");
    const notebook = app.shell.currentWidget.content;
    notebook.activeCell.model.sharedModel.setSource("dashboard");
    await app.commands.execute("notebook:run-cell");
}"""
# Once the kernel is idle and every code cell (but the last, with `butLast`) has run: {error: null}.
# As soon as a cell shows an error, which stops "run all": {error: "<name>: <value>"}. Otherwise false.
CELLS_RAN = """(butLast) => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session.kernel;
    let cells = panel.content.widgets.filter((cell) => cell.model.type === "code");
    if (butLast) cells = cells.slice(0, -1);
    for (const cell of cells) {
        const outputs = cell.model.outputs;
        for (let i = 0; i < outputs.length; i++) {
            const output = outputs.get(i).toJSON();
            if (output.output_type === "error") return {error: `${output.ename}: ${output.evalue}`};
        }
    }
    const ran = kernel.status === "idle" && cells.every((cell) => cell.model.executionCount !== null);
    return ran ? {error: null} : false;
}"""


def wait_for_cells(page, but_last: bool, timeout_ms: int) -> None:
    """Wait until the cells ran; fail with the first cell error instead of waiting out the timeout."""
    outcome = page.wait_for_function(CELLS_RAN, arg=but_last, timeout=timeout_ms, polling=1000).json_value()
    assert outcome["error"] is None, f"A notebook cell failed: {outcome['error']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in command:
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def lab(tmp_path):
    """Start JupyterLab on a free loopback port in `tmp_path`; yield (base URL, token, run dir)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "01_launch.ipynb", root)
    settings = tmp_path / "settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))

    run_dir = tmp_path / "run"
    port, token = free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "HOMUNCULY_NB_SECRETS_FILE": str(tmp_path / "secrets.json"),
        "HOMUNCULY_NB_PORTS": "auto",
        "HOMUNCULY_NB_RUN_DIR": str(run_dir),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    }
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.extension_manager=readonly",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, token, run_dir
    finally:
        # SIGTERM lets the server shut its kernels down; their stacks were stopped by the last cell.
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(30)
        log.close()


@pytest.mark.integration
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_launch_notebook_renders_in_chromium(lab, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    base, token, run_dir = lab
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{base}/lab/tree/01_launch.ipynb?token={token}")
            page.wait_for_function(KERNEL_IDLE, timeout=180_000)

            # Run everything but the last cell, which stops the stack, so the screenshot shows it running.
            page.evaluate(SELECT_LAST_CELL)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-above')")
            wait_for_cells(page, but_last=True, timeout_ms=420_000)
            page.wait_for_selector(".widget-gridbox", timeout=60_000)
            page.wait_for_selector(".js-plotly-plot", timeout=60_000)

            dashboard = page.locator(".widget-gridbox").first
            dashboard.scroll_into_view_if_needed()
            run_dir.mkdir(parents=True, exist_ok=True)
            screenshot = run_dir / "01_launch-dashboard.png"
            page.screenshot(path=str(screenshot))
            artifacts = os.environ.get("HOMUNCULY_NB_ARTIFACTS_DIR")
            if artifacts:
                Path(artifacts).mkdir(parents=True, exist_ok=True)
                shutil.copy(screenshot, Path(artifacts) / screenshot.name)
            dashboard_text = dashboard.inner_text()
            healthy = dashboard_text.count("Healthy")

            # A second view of the same dashboard must follow the stack too once the last cell stops it.
            page.evaluate(SHOW_DASHBOARD_AGAIN)
            page.wait_for_function("() => document.querySelectorAll('.widget-gridbox').length >= 2",
                                   timeout=60_000)
            page.evaluate(SELECT_LAST_CELL)
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-cell')")
            wait_for_cells(page, but_last=False, timeout_ms=120_000)
            page.wait_for_function(
                """() => Array.from(document.querySelectorAll('.widget-gridbox'))
                        .every((grid) => grid.innerText.split('Stopped').length - 1 === 7)""",
                timeout=60_000,
            )
            views_text = [page.locator(".widget-gridbox").nth(i).inner_text() for i in range(2)]
            text = page.inner_text(".jp-NotebookPanel")
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [errors.nth(i).inner_text() for i in range(errors.count())
                          if "Traceback" in errors.nth(i).inner_text()]
            plots = page.locator(".js-plotly-plot").count()
        finally:
            browser.close()

    assert "Error displaying widget" not in text
    assert tracebacks == []
    for name in RESOURCES:
        assert name in dashboard_text
    assert healthy >= 9
    assert views_text[0].count("Stopped") == 7
    assert views_text[1] == views_text[0]
    assert plots >= 1
    assert screenshot.stat().st_size > 10_000
    assert (run_dir / "telemetry").is_dir()
    assert processes_mentioning(str(tmp_path / "state")) == []
