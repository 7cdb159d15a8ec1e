"""ResourceDashboard on a real stack of two local processes: rows, console log, and the Stop/Start buttons."""

from __future__ import annotations

import re
import sys
import time

import pytest

from homunculy_nb.stack import Stack
from homunculy_nb.views import ResourceDashboard
from homunculy_nb.views.resources import endpoint_links

TICKER = """\
import itertools, time
for i in itertools.count():
    print(f"tick {i}", flush=True)
    time.sleep(0.1)
"""


def wait_for(condition, timeout: float = 60.0, dashboard: ResourceDashboard | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            details = ""
            if dashboard is not None:
                states = {name: row.state.value for name, row in dashboard._rows.items()}
                details = f"; dashboard message {dashboard._message.value!r}, states {states}"
            raise AssertionError(f"condition not met in {timeout} s{details}")
        time.sleep(0.05)


def last_tick(text: str) -> int:
    ticks = [int(number) for number in re.findall(r"tick (\d+)", text)]
    return max(ticks) if ticks else -1


@pytest.fixture
def stack(tmp_path):
    script = tmp_path / "ticker.py"
    script.write_text(TICKER)
    stack = Stack("views-dashboard", state_dir=tmp_path / "state")
    stack.add_python_app("ticker", str(script))
    stack.add_executable("once", sys.executable, args=["-c", "print('hello once')"])
    stack.up(timeout=120, progress=False)
    try:
        yield stack
    finally:
        stack.down()


@pytest.mark.integration
def test_dashboard_rows_show_status(stack):
    dashboard = ResourceDashboard(stack, interval=0.1)
    try:
        status = stack.status().set_index("name")
        ticker, once = dashboard._rows["ticker"], dashboard._rows["once"]

        assert list(dashboard._rows) == ["ticker", "once"]
        assert "Healthy" in ticker.state.value
        wait_for(lambda: "Finished" in once.state.value, dashboard=dashboard)
        assert ticker.pid.value == str(status.loc["ticker", "pid"])
        assert ticker.type.value == "python_app"
        assert ticker.start.disabled
        assert not ticker.stop.disabled
        assert not once.start.disabled
        assert once.uptime.value == ""
        assert repr(dashboard) == "<ResourceDashboard stack='views-dashboard' resources=2 selected='ticker'>"
    finally:
        dashboard.close()


@pytest.mark.integration
def test_dashboard_console_follows_new_lines(stack):
    dashboard = ResourceDashboard(stack, interval=0.1)
    try:
        first = last_tick(dashboard._log.value)
        wait_for(lambda: last_tick(dashboard._log.value) > first + 3)
        ticks = [int(number) for number in re.findall(r"tick (\d+)", dashboard._log.value)]
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))

        dashboard.select("once")
        assert "hello once" in dashboard._log.value
        assert "tick" not in dashboard._log.value
        with pytest.raises(ValueError, match="Unknown resource 'nope'"):
            dashboard.select("nope")
    finally:
        dashboard.close()


@pytest.mark.integration
def test_dashboard_buttons_stop_and_start(stack):
    dashboard = ResourceDashboard(stack, interval=0.1)
    try:
        row = dashboard._rows["ticker"]
        row.stop.click()
        wait_for(lambda: "Stopped" in row.state.value, dashboard=dashboard)
        wait_for(lambda: "Stop ticker: done." in dashboard._message.value)
        assert stack.status().set_index("name").loc["ticker", "state"] == "Stopped"
        assert not row.start.disabled
        assert row.health.value == ""
        assert row.uptime.value == ""

        row.start.click()
        wait_for(lambda: "Healthy" in row.state.value)
        wait_for(lambda: row.pid.value != "")
        wait_for(lambda: "Start ticker: done." in dashboard._message.value)
    finally:
        dashboard.close()


@pytest.mark.integration
def test_dashboard_shows_failed_action(stack):
    dashboard = ResourceDashboard(stack, interval=0.1)
    try:
        wait_for(lambda: "Finished" in dashboard._rows["once"].state.value, dashboard=dashboard)
        dashboard.act("stop", "once")
        wait_for(lambda: "failed" in dashboard._message.value)
        assert "Cannot stop `once`" in dashboard._message.value
    finally:
        dashboard.close()


@pytest.mark.integration
def test_dashboard_close_unsubscribes(stack):
    dashboard = ResourceDashboard(stack, interval=0.1)
    dashboard.close()
    before = dashboard._log.value

    time.sleep(0.5)
    assert dashboard._log.value == before


def test_endpoint_links():
    assert endpoint_links("http://127.0.0.1:8000, tcp://127.0.0.1:5433") == (
        "<a href='http://127.0.0.1:8000' target='_blank' rel='noopener'>http://127.0.0.1:8000</a>"
        "<br><code>tcp://127.0.0.1:5433</code>")
    assert endpoint_links({"http": "https://x.test/?a=1&b=2"}).count("&amp;") == 2
    assert endpoint_links(None) == ""
