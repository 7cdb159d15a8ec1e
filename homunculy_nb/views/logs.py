"""LogViewer: log records filtered by service, severity, text and trace id; a record opens its trace."""

from __future__ import annotations

import html
import logging
import threading
from typing import Any

import pandas as pd

from ._common import import_plotly, import_widgets, require_methods, short_id
from ._live import DEFAULT_INTERVAL, Throttle
from ._widgets import MONOSPACE_STYLE, error_html, replace_figure, serialized, subscribe
from .figures.waterfall import waterfall

widgets = import_widgets()
logger = logging.getLogger(__name__)

ALL = "(all services)"
SEVERITIES = (("any", None), ("TRACE", 1), ("DEBUG", 5), ("INFO", 9), ("WARN", 13), ("ERROR", 17),
              ("FATAL", 21))


def log_label(record: Any) -> str:
    """Return the one-line label of a log record: time, severity, service, trace, body."""
    time = pd.Timestamp(record.time).strftime("%H:%M:%S.%f")[:-3] if pd.notna(record.time) else "–"
    severity = str(record.severity_text) if isinstance(record.severity_text, str) and record.severity_text \
        else str(record.severity_number) if pd.notna(record.severity_number) else ""
    trace = short_id(record.trace_id) if isinstance(record.trace_id, str) and record.trace_id else "        "
    body = str(record.body).replace("\n", " ⏎ ")
    return f"{time}  {severity:<5}  {record.service_name:<20.20}  {trace}  {body[:300]}"


class LogViewer(widgets.VBox):
    """Filter log records by service, minimum severity, body text and trace id; newest last.

    Selecting a record with a trace id draws that trace's waterfall below the list. With `live`, new
    records refresh the list at most twice a second.
    """

    def __init__(self, source: Any, *, limit: int = 500, live: bool = True,
                 interval: float = DEFAULT_INTERVAL) -> None:
        require_methods(source, "logs", "trace")
        self._view_lock = threading.RLock()
        go = import_plotly()

        self._source = source
        self._limit = limit
        self._records = pd.DataFrame()
        self._trace_id: str | None = None

        self.service = widgets.Dropdown(description="service", options=[ALL], value=ALL)
        self.severity = widgets.Dropdown(description="min severity", options=SEVERITIES, value=None)
        self.text = widgets.Text(description="text", placeholder="body contains")
        self.trace = widgets.Text(description="trace id", placeholder="hex trace id")
        self.table = widgets.Select(options=[], rows=14, layout=widgets.Layout(width="100%"))
        self.table.add_class("homunculy-mono")
        self.figure = go.FigureWidget()
        self.figure.layout.height = 40
        self._message = widgets.HTML()

        for control in (self.service, self.severity, self.text, self.trace):
            control.observe(lambda _: self.refresh(), names="value")
        self.table.observe(self._on_select, names="value")

        filters = widgets.HBox([self.service, self.severity, self.text, self.trace],
                               layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([widgets.HTML(MONOSPACE_STYLE), filters, self.table, self._message, self.figure])

        self._throttle = Throttle(lambda _: self.refresh(), interval, on_error=self._show_error)
        self._unsubscribe = subscribe(source, self._throttle, ("logs",)) if live else None
        self.refresh()

    @property
    def trace_id(self) -> str | None:
        """The trace drawn under the list."""
        return self._trace_id

    def filtered_logs(self) -> pd.DataFrame:
        """Return the records that match the filters, the newest `limit` of them, oldest first."""
        service = None if self.service.value == ALL else self.service.value
        trace_id = self.trace.value.strip().lower() or None
        records = self._source.logs(service=service, severity=self.severity.value, trace_id=trace_id,
                                    contains=self.text.value or None)
        return records.sort_values("time", kind="stable").tail(self._limit).reset_index(drop=True)

    @serialized
    def refresh(self) -> None:
        """Query the records again and update the service list and the table."""
        services = sorted({str(s) for s in self._source.logs()["service_name"].dropna()})
        if [ALL, *services] != list(self.service.options):
            current = self.service.value
            self.service.options = [ALL, *services]
            self.service.value = current if current in self.service.options else ALL

        try:
            records = self.filtered_logs()
        except ValueError as exc:
            # An invalid trace id typed into the filter; show why instead of failing the callback.
            self._message.value = error_html(str(exc))
            return
        self._records = records
        options = [(log_label(record), index) for index, record in enumerate(records.itertuples(index=False))]
        if options != list(self.table.options):
            self.table.options = options
        self._message.value = html.escape(f"{len(records)} records")

    @serialized
    def open_record(self, index: int) -> None:
        """Draw the trace of record `index` of the list; a record without a trace id clears the figure."""
        record = self._records.iloc[index]
        trace_id = record["trace_id"]
        if not isinstance(trace_id, str) or not trace_id:
            self._trace_id = None
            self._message.value = html.escape("This record has no trace id.")
            return
        self.open_trace(trace_id)

    @serialized
    def open_trace(self, trace_id: str) -> None:
        """Draw the waterfall of `trace_id` under the list."""
        self._trace_id = trace_id
        replace_figure(self.figure, waterfall(self._source, trace_id))

    def _on_select(self, change: dict) -> None:
        if change["new"] is not None:
            self.open_record(change["new"])

    def _show_error(self, error: BaseException) -> None:
        self._message.value = error_html(f"Update failed: {error}")

    def close(self) -> None:
        """Stop following the collector and close the widgets."""
        # Also runs from __del__ of a widget whose __init__ raised, so attributes may be missing.
        if getattr(self, "_throttle", None) is not None:
            self._throttle.close()
        if getattr(self, "_unsubscribe", None) is not None:
            self._unsubscribe()
            self._unsubscribe = None
        super().close()

    def __repr__(self) -> str:
        return f"<LogViewer records={len(self._records)} trace={self._trace_id!r}>"
