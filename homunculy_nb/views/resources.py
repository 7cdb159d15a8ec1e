"""ResourceDashboard: the stack's resources with their state, endpoints, buttons and console logs."""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from collections import deque
from typing import Any

import pandas as pd

from ._common import import_widgets
from ._live import DEFAULT_INTERVAL, Throttle
from ._widgets import console_html, error_html, format_duration, serialized, state_badge

widgets = import_widgets()
logger = logging.getLogger(__name__)

STARTABLE = {"NotStarted", "Stopped", "Exited", "FailedToStart", "Finished"}
STOPPABLE = {"Waiting", "Starting", "Running", "Healthy", "Unhealthy"}
UP = {"Running", "Healthy", "Unhealthy"}
COLUMNS = ("resource", "type", "state", "health", "endpoints", "pid", "uptime", "restarts", "")
GRID_TEMPLATE = "minmax(190px, 1.8fr) minmax(90px, 1fr) 1fr 0.8fr minmax(180px, 2fr) 0.6fr 0.8fr 0.6fr 256px"


class _ResourceRow:
    """The widgets of one resource row, updated in place from a `stack.status()` row."""

    def __init__(self, dashboard: ResourceDashboard, name: str) -> None:
        self.name = name
        self.select = widgets.Button(description=name, tooltip=f"Show the console log of {name}",
                                     layout=widgets.Layout(width="auto"))
        self.select.on_click(lambda _: dashboard.select(name))
        self.type = widgets.Label()
        self.state = widgets.HTML()
        self.health = widgets.HTML()
        self.endpoints = widgets.HTML()
        self.pid = widgets.Label()
        self.uptime = widgets.Label()
        self.restarts = widgets.Label()
        self.start = widgets.Button(description="Start", icon="play", layout=widgets.Layout(width="72px"))
        self.stop = widgets.Button(description="Stop", icon="stop", layout=widgets.Layout(width="72px"))
        self.restart = widgets.Button(description="Restart", icon="refresh", layout=widgets.Layout(width="96px"))
        for button, action in ((self.start, "start"), (self.stop, "stop"), (self.restart, "restart")):
            button.on_click(lambda _, action=action: dashboard.act(action, name))
        self.buttons = widgets.HBox([self.start, self.stop, self.restart])
        self.cells = [self.select, self.type, self.state, self.health, self.endpoints, self.pid, self.uptime,
                      self.restarts, self.buttons]

    def update(self, row: pd.Series, now: pd.Timestamp) -> None:
        state = str(getattr(row.get("state"), "value", row.get("state")))
        self.type.value = _text(row.get("type"))
        self.state.value = state_badge(state)
        # The last health result is stale once the resource stops, so it shows only while it is up.
        self.health.value = html.escape(_text(row.get("health"))) if state in UP else ""
        self.endpoints.value = endpoint_links(row.get("endpoints"))
        self.pid.value = _text(row.get("pid"))
        self.restarts.value = _text(row.get("restarts"))
        started = row.get("started_at")
        self.uptime.value = (format_duration((now - pd.Timestamp(started)).total_seconds())
                             if state in UP and _present(started) else "")
        last_error = row.get("last_error")
        self.state.value += (f" <span title='{html.escape(_text(last_error), quote=True)}'>⚠</span>"
                             if _present(last_error) and str(last_error) else "")
        self.start.disabled = state not in STARTABLE
        self.stop.disabled = state not in STOPPABLE
        self.restart.disabled = state in {"NotStarted", "Stopping"}


def _present(value: object) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and pd.isna(value)) \
        and not (isinstance(value, pd.Timestamp) and pd.isna(value))


def _text(value: object) -> str:
    return str(value) if _present(value) else ""


def endpoint_links(endpoints: object) -> str:
    """Render endpoints (a dict of name to URL, a list of URLs or one string) as HTML, links for http(s)."""
    if isinstance(endpoints, dict):
        items = [str(url) for url in endpoints.values() if _present(url)]
    elif isinstance(endpoints, (list, tuple)):
        items = [str(url) for url in endpoints if _present(url)]
    elif _present(endpoints) and str(endpoints):
        items = [part for part in str(endpoints).replace(",", " ").split() if part]
    else:
        items = []

    links = []
    for url in items:
        escaped = html.escape(url, quote=True)
        if url.startswith(("http://", "https://")):
            links.append(f"<a href='{escaped}' target='_blank' rel='noopener'>{escaped}</a>")
        else:
            links.append(f"<code>{escaped}</code>")
    return "<br>".join(links)


class ResourceDashboard(widgets.VBox):
    """A row per resource with state, health, endpoints, pid, uptime and restarts; buttons; console logs.

    Updates come from `stack.on_event` and `stack.on_log` callbacks and are applied at most twice a
    second. Start, Stop and Restart run on the package's event loop, so the cell and the kernel stay
    free while a resource starts. Call `close()` to unsubscribe.
    """

    def __init__(self, stack: Any, *, log_lines: int = 200, interval: float = DEFAULT_INTERVAL) -> None:
        for method in ("status", "logs", "on_event", "on_log"):
            if not callable(getattr(stack, method, None)):
                raise TypeError(f"Expected a Stack, but {type(stack).__name__} has no `{method}()`.")

        self._view_lock = threading.RLock()
        self._stack = stack
        self._rows: dict[str, _ResourceRow] = {}
        self._selected: str | None = None
        self._log_since: pd.Timestamp | None = None
        self._lines: deque[str] = deque(maxlen=log_lines)
        self._log_lines = log_lines

        self._grid = widgets.GridBox(layout=widgets.Layout(grid_template_columns=GRID_TEMPLATE,
                                                           grid_gap="2px 6px", align_items="center"))
        self._message = widgets.HTML()
        self._log_title = widgets.HTML("<b>Console log</b>: choose a resource")
        self._log = widgets.HTML(console_html([]))
        super().__init__([self._grid, self._message, self._log_title, self._log])

        self._throttle = Throttle(self._apply, interval, on_error=self._show_error)
        self._unsubscribe = [
            stack.on_event(lambda event: self._throttle.push(("event", event))),
            stack.on_log(lambda time, resource, stream, line: self._throttle.push(
                ("log", time, resource, stream, line))),
        ]
        self.refresh()

    @property
    def selected(self) -> str | None:
        """The resource whose console log the pane shows."""
        return self._selected

    @serialized
    def refresh(self) -> None:
        """Read `stack.status()` again and update every row (also called on orchestrator events)."""
        status = self._stack.status()
        now = pd.Timestamp.now(tz="UTC")
        names = [str(name) for name in status["name"]]
        if names != list(self._rows):
            self._rows = {name: self._rows.get(name) or _ResourceRow(self, name) for name in names}
            header = [widgets.HTML(f"<b>{label}</b>") for label in COLUMNS]
            self._grid.children = header + [cell for row in self._rows.values() for cell in row.cells]
        for _, row in status.iterrows():
            started = row.get("started_at")
            if isinstance(started, pd.Timestamp) and started.tzinfo is None:
                row = row.copy()
                row["started_at"] = started.tz_localize("UTC")
            self._rows[str(row["name"])].update(row, now)
        if self._selected is None and names:
            self.select(names[0])

    @serialized
    def select(self, name: str) -> None:
        """Show the console log of resource `name` and follow its new lines."""
        if name not in self._rows:
            raise ValueError(f"Unknown resource {name!r}; the stack has {', '.join(self._rows) or 'none'}.")
        self._selected = name
        for row_name, row in self._rows.items():
            row.select.button_style = "info" if row_name == name else ""

        logs = self._stack.logs(name, tail=self._log_lines)
        self._lines = deque((_format_line(r.time, r.stream, r.line) for r in logs.itertuples(index=False)),
                            maxlen=self._log_lines)
        # Lines queued before this read are already in `logs`; `_apply` skips them by time.
        self._log_since = pd.Timestamp(logs["time"].iloc[-1]) if len(logs) else None
        self._log_title.value = f"<b>Console log</b>: {html.escape(name)}"
        self._log.value = console_html(self._lines)

    def act(self, action: str, name: str) -> None:
        """Start, stop or restart resource `name` in the background; the outcome shows under the table."""
        if action not in ("start", "stop", "restart"):
            raise ValueError(f"Unknown action {action!r}; use 'start', 'stop' or 'restart'.")

        from .. import _loop

        self._message.value = html.escape(f"{action.capitalize()} {name} …")
        method = getattr(self._stack, f"{action}_async", None)
        if method is not None:
            future = _loop.submit(method(name))
        else:
            future = _loop.submit(asyncio.to_thread(getattr(self._stack, action), name))
        future.add_done_callback(lambda done: self._throttle.push(("done", action, name, done)))

    @serialized
    def _apply(self, items: list[Any]) -> None:
        lines_added = False
        for item in items:
            if item[0] == "log":
                _, time, resource, stream, line = item
                already_read = self._log_since is not None and pd.Timestamp(time) <= self._log_since
                if resource == self._selected and not already_read:
                    self._lines.append(_format_line(time, stream, line))
                    lines_added = True
            elif item[0] == "done":
                _, action, name, future = item
                error = future.exception()
                if error is not None:
                    self._message.value = error_html(f"{action.capitalize()} {name} failed: {error}")
                else:
                    self._message.value = html.escape(f"{action.capitalize()} {name}: done.")

        # Every batch refreshes the rows: events change states, and log lines keep the uptimes current.
        self.refresh()
        if lines_added:
            self._log.value = console_html(self._lines)

    def _show_error(self, error: BaseException) -> None:
        self._message.value = error_html(f"Dashboard update failed: {error}")

    def close(self) -> None:
        """Unsubscribe from the stack and close the widgets."""
        # Also runs from __del__ of a widget whose __init__ raised, so attributes may be missing.
        if getattr(self, "_throttle", None) is not None:
            self._throttle.close()
        for unsubscribe in getattr(self, "_unsubscribe", []):
            unsubscribe()
        self._unsubscribe = []
        for row in getattr(self, "_rows", {}).values():
            for cell in row.cells:
                cell.close()
        super().close()

    def __repr__(self) -> str:
        name = getattr(self._stack, "name", "?")
        return f"<ResourceDashboard stack={name!r} resources={len(self._rows)} selected={self._selected!r}>"


def _format_line(time: object, stream: object, line: object) -> str:
    stamp = pd.Timestamp(time).strftime("%H:%M:%S") if _present(time) else "        "
    marker = "!" if str(stream) == "stderr" else " "
    return f"{stamp} {marker} {line}"
