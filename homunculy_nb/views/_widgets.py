"""Building blocks the widgets share: figure replacement, HTML tables, badges, the scrolling log pane."""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

STATE_COLORS = {
    "Healthy": "#2CA02C", "Running": "#2CA02C", "Finished": "#1F77B4",
    "Starting": "#E6A700", "Waiting": "#E6A700", "Stopping": "#E6A700",
    "Unhealthy": "#FF7F0E", "Exited": "#D62728", "FailedToStart": "#D62728",
    "NotStarted": "#7F7F7F", "Stopped": "#7F7F7F",
}


def replace_figure(widget: Any, figure: Any) -> None:
    """Show `figure` in the FigureWidget `widget` in one batched update.

    When the traces keep their number and types, they are updated in place, which keeps the plot and
    sends NumPy arrays as binary buffers. Otherwise the traces are replaced.
    """
    with widget.batch_update():
        same_shape = len(widget.data) == len(figure.data) and all(
            old.type == new.type for old, new in zip(widget.data, figure.data))
        if same_shape:
            for old, new in zip(widget.data, figure.data):
                properties = new.to_plotly_json()
                properties.pop("uid", None)
                old.update(properties, overwrite=True)
        else:
            widget.data = ()
            widget.add_traces(figure.data)
        widget.layout = figure.layout


def badge(text: str, color: str) -> str:
    """Return an HTML badge: `text` in white on a rounded `color` background."""
    return (f'<span style="background:{color};color:white;border-radius:8px;padding:1px 8px;'
            f'font-size:0.85em;white-space:nowrap">{html.escape(text)}</span>')


def state_badge(state: object) -> str:
    """Return the badge of a resource state, coloured by how healthy the state is."""
    text = str(getattr(state, "value", state))
    return badge(text, STATE_COLORS.get(text, "#7F7F7F"))


def html_table(frame: pd.DataFrame, columns: Sequence[str], formatters: dict[str, Callable[[Any], str]] | None = None,
               headers: Sequence[str] | None = None, max_rows: int = 200) -> str:
    """Render `columns` of `frame` as a compact HTML table; values are escaped unless a formatter returns HTML."""
    formatters = formatters or {}
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(h)}</th>"
                   for h in (headers or columns))
    body = []
    for _, row in frame.head(max_rows).iterrows():
        cells = []
        for column in columns:
            value = row.get(column)
            text = formatters[column](value) if column in formatters else html.escape(_plain(value))
            cells.append(f"<td style='padding:2px 8px;vertical-align:top'>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    more = ""
    if len(frame) > max_rows:
        more = f"<div style='color:#777'>… {len(frame) - max_rows} more rows</div>"
    return (f"<table style='border-collapse:collapse;font-size:0.9em'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>{more}")


def _plain(value: object) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, pd.Timestamp):
        return value.strftime("%H:%M:%S.%f")[:-3]
    return str(value)


def console_html(lines: Iterable[str], height: str = "260px") -> str:
    """Render console lines in a monospace box that stays scrolled to the newest line.

    The box lays its content out bottom to top (`column-reverse`), so browsers keep the scroll position
    at the end as lines arrive, with no script.
    """
    text = html.escape("\n".join(lines))
    return (f"<div style='height:{height};overflow:auto;display:flex;flex-direction:column-reverse;"
            f"background:#1E1E1E;color:#DDDDDD;padding:4px 8px;border-radius:4px'>"
            f"<pre style='flex:none;margin:0;font-size:12px;line-height:1.3;white-space:pre-wrap'>{text}</pre></div>")


def format_duration(seconds: float) -> str:
    """Format an uptime: `42s`, `3m 12s`, `2h 05m`, `3d 4h`."""
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def error_html(message: str) -> str:
    """Return `message` as escaped red text."""
    return f"<span style='color:#D62728'>{html.escape(message)}</span>"


# Select widgets listing traces and log records read better in a fixed-width font.
MONOSPACE_STYLE = ("<style>.homunculy-mono select, .homunculy-mono option "
                   "{font-family: monospace; font-size: 12px;}</style>")


def subscribe(source: Any, throttle: Any, signals: tuple[str, ...]) -> Callable[[], None] | None:
    """Push each batch the collector receives for `signals` into `throttle` as (signal, frame).

    Returns the unsubscribe function, or None when `source` cannot notify (a saved run).
    """
    on_receive = getattr(source, "on_receive", None)
    if not callable(on_receive):
        return None
    return on_receive(lambda signal, frame: throttle.push((signal, frame)), signals=signals)


def serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run `method` under the widget's `_view_lock` (an RLock).

    Refreshes run on the kernel thread (a filter changed) and on the throttle's timer thread (new
    data). Without the lock, a refresh that read older data could write its widgets after a newer
    one and leave them stale.
    """

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._view_lock:
            return method(self, *args, **kwargs)

    return locked
