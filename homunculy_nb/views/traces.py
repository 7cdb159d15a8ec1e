"""TraceExplorer: a filterable list of traces, the waterfall of the chosen one, its spans and its logs."""

from __future__ import annotations

import html
import logging
import threading
from typing import Any

import pandas as pd

from ._common import format_ms, import_plotly, import_widgets, is_error, require_methods, short_id
from ._live import DEFAULT_INTERVAL, Throttle
from ._widgets import MONOSPACE_STYLE, error_html, html_table, replace_figure, serialized, subscribe
from .figures.waterfall import waterfall

widgets = import_widgets()
logger = logging.getLogger(__name__)

WINDOWS = (("all time", None), ("last 5 min", "5min"), ("last 15 min", "15min"), ("last hour", "1h"),
           ("last day", "1D"))
ALL = "(all services)"


def trace_label(row: Any) -> str:
    """Return the one-line label of a trace in the list: time, duration, spans, errors, root."""
    start = pd.Timestamp(row.start_time).strftime("%H:%M:%S")
    errors = f"{int(row.error_count)} err" if row.error_count else ""
    return (f"{start}  {format_ms(row.duration_ms):>9}  {int(row.span_count):>4} spans  {errors:>6}  "
            f"{row.root_service}: {row.root_name}  [{short_id(row.trace_id)}]")


class TraceExplorer(widgets.VBox):
    """Filter traces by service, root name, minimum duration, errors and time window; inspect one.

    Choosing a trace draws its waterfall; clicking a bar (or `select_span`) shows that span's
    attributes, events and resource; the trace's log records are listed below. With `live`, new spans
    refresh the list and the open waterfall at most twice a second.
    """

    def __init__(self, source: Any, *, limit: int = 200, live: bool = True,
                 interval: float = DEFAULT_INTERVAL) -> None:
        require_methods(source, "traces", "trace", "logs")
        self._view_lock = threading.RLock()
        go = import_plotly()

        self._source = source
        self._limit = limit
        self._trace_id: str | None = None
        self._spans = pd.DataFrame()
        self._updating_filters = False

        self.service = widgets.Dropdown(description="service", options=[ALL], value=ALL)
        self.name = widgets.Text(description="root name", placeholder="contains")
        self.min_duration = widgets.BoundedFloatText(description="min ms", value=0, min=0, max=1e9,
                                                     layout=widgets.Layout(width="170px"))
        self.errors_only = widgets.Checkbox(description="errors only", indent=False)
        self.window = widgets.Dropdown(description="window", options=WINDOWS, value=None)
        self.table = widgets.Select(options=[], rows=10, layout=widgets.Layout(width="100%"))
        self.table.add_class("homunculy-mono")
        self.figure = go.FigureWidget()
        self.details = widgets.HTML()
        self.logs = widgets.HTML()
        self._message = widgets.HTML()

        for control in (self.service, self.name, self.min_duration, self.errors_only, self.window):
            control.observe(lambda _: self.refresh(), names="value")
        self.table.observe(self._on_table, names="value")

        filters = widgets.HBox([self.service, self.name, self.min_duration, self.errors_only, self.window],
                               layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([widgets.HTML(MONOSPACE_STYLE), filters, self.table, self._message, self.figure,
                          widgets.HTML("<b>Span</b>"), self.details, widgets.HTML("<b>Logs of this trace</b>"),
                          self.logs])

        self._throttle = Throttle(self._apply, interval, on_error=self._show_error)
        self._unsubscribe = subscribe(source, self._throttle, ("spans",)) if live else None
        self.refresh()

    @property
    def trace_id(self) -> str | None:
        """The trace shown in the waterfall."""
        return self._trace_id

    def filtered_traces(self, traces: pd.DataFrame | None = None) -> pd.DataFrame:
        """Return the traces that match the filters, newest first, at most `limit` of them.

        `traces` is the frame of `source.traces()`, queried when not given.
        """
        traces = self._source.traces() if traces is None else traces
        window = self.window.value
        return filter_traces(
            traces,
            service=None if self.service.value == ALL else self.service.value,
            since=pd.Timestamp.now(tz="UTC") - pd.Timedelta(window) if window else None,
            min_duration_ms=self.min_duration.value,
            errors_only=self.errors_only.value,
            name=self.name.value,
        ).head(self._limit)

    @serialized
    def refresh(self) -> None:
        """Query the traces again and update the service list and the table."""
        if self._updating_filters:
            return

        all_traces = self._source.traces()
        services = sorted({str(service) for services in all_traces["services"] for service in services})
        if [ALL, *services] != list(self.service.options):
            current = self.service.value
            self._updating_filters = True
            try:
                self.service.options = [ALL, *services]
                self.service.value = current if current in self.service.options else ALL
            finally:
                self._updating_filters = False

        traces = self.filtered_traces(all_traces)
        options = [(trace_label(row), row.trace_id) for row in traces.itertuples(index=False)]
        if options != list(self.table.options):
            selected = self.table.value
            self.table.options = options
            if selected in traces["trace_id"].to_numpy():
                self.table.value = selected
        self._message.value = html.escape(f"{len(traces)} of {len(all_traces)} traces")

    @serialized
    def select_trace(self, trace_id: str) -> None:
        """Draw the waterfall of `trace_id` and list its logs."""
        self._trace_id = trace_id
        if trace_id in [value for _, value in self.table.options] and self.table.value != trace_id:
            self.table.value = trace_id
        self._draw()
        self.details.value = "Click a bar to see the span's attributes, events and resource."

    @serialized
    def select_span(self, span_id: str) -> None:
        """Show the attributes, events and resource of span `span_id` of the open trace."""
        rows = self._spans[self._spans["span_id"] == span_id] if not self._spans.empty else self._spans
        if rows.empty:
            raise ValueError(f"Span {span_id!r} is not in the open trace {self._trace_id!r}.")
        self.details.value = span_details(rows.iloc[0])

    @serialized
    def _draw(self) -> None:
        if self._trace_id is None:
            return
        self._spans = self._source.trace(self._trace_id)
        replace_figure(self.figure, waterfall(self._source, self._trace_id))
        for trace in self.figure.data:
            trace.on_click(self._on_click)
        records = self._source.logs(trace_id=self._trace_id)
        self.logs.value = log_table(records) if not records.empty else "No log records for this trace."

    def _on_table(self, change: dict) -> None:
        if change["new"] and change["new"] != self._trace_id:
            self.select_trace(change["new"])

    def _on_click(self, trace: Any, points: Any, _state: Any) -> None:
        for index in points.point_inds:
            self.select_span(str(trace.customdata[index][0]))
            return

    @serialized
    def _apply(self, batches: list[Any]) -> None:
        self.refresh()
        if self._trace_id is not None and any(_mentions(batch, self._trace_id) for batch in batches):
            self._draw()

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
        return f"<TraceExplorer traces={len(self.table.options)} selected={self._trace_id!r}>"


def filter_traces(traces: pd.DataFrame, service: str | None = None, since: pd.Timestamp | None = None,
                  min_duration_ms: float = 0, errors_only: bool = False, name: str = "") -> pd.DataFrame:
    """Return the rows of a `traces()` frame that touch `service`, started at or after `since`, took at
    least `min_duration_ms`, have an error span (with `errors_only`) and whose root name contains `name`
    (case-insensitive), newest first."""
    mask = pd.Series(True, index=traces.index)
    if service is not None:
        mask &= traces["services"].map(lambda services: service in list(services))
    if since is not None:
        mask &= traces["start_time"] >= since
    if min_duration_ms:
        mask &= traces["duration_ms"] >= min_duration_ms
    if errors_only:
        mask &= traces["error_count"] > 0
    if name:
        mask &= traces["root_name"].astype(str).str.contains(name, case=False, regex=False)
    return traces[mask].sort_values("start_time", ascending=False)


def _mentions(batch: tuple[str, pd.DataFrame], trace_id: str) -> bool:
    _, frame = batch
    return bool((frame["trace_id"] == trace_id).any())


def span_details(span: pd.Series) -> str:
    """Render one span's identity, status, attributes, events and resource attributes as HTML."""
    status = str(span.get("status_code"))
    status_html = (f"<span style='color:#D62728'>{html.escape(status)}: "
                   f"{html.escape(str(span.get('status_message') or ''))}</span>" if is_error(status)
                   else html.escape(status))
    parts = [
        f"<b>{html.escape(str(span['name']))}</b> · {html.escape(str(span['service_name']))} · "
        f"{html.escape(str(span.get('kind')))} · {format_ms(span.get('duration_ms'))}"
        + (f" (self {format_ms(span.get('self_time_ms'))})" if "self_time_ms" in span.index else ""),
        f"span <code>{html.escape(str(span['span_id']))}</code> · parent "
        f"<code>{html.escape(str(span.get('parent_span_id') or '–'))}</code> · status {status_html}",
        "<b>attributes</b>" + _dict_table(span.get("attributes")),
    ]
    events = span.get("events")
    if isinstance(events, (list, tuple)) and len(events):
        rows = "".join(f"<li>{html.escape(str(_get(event, 'name')))} "
                       f"{html.escape(str(_get(event, 'time') or ''))}"
                       f"{_dict_table(_get(event, 'attributes'))}</li>" for event in events)
        parts.append(f"<b>events</b><ul style='margin:0'>{rows}</ul>")
    parts.append("<b>resource</b>" + _dict_table(span.get("resource_attributes")))
    return "<br>".join(parts)


def _get(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)


def _dict_table(values: object) -> str:
    if not isinstance(values, dict) or not values:
        return " <i>none</i>"
    rows = "".join(f"<tr><td style='padding:0 8px 0 0'><code>{html.escape(str(key))}</code></td>"
                   f"<td>{html.escape(str(value))}</td></tr>" for key, value in values.items())
    return f"<table style='font-size:0.9em'>{rows}</table>"


def log_table(records: pd.DataFrame, max_rows: int = 200) -> str:
    """Render log records (time, severity, service, body) as an HTML table."""
    return html_table(records.sort_values("time"), ["time", "severity_text", "service_name", "body"],
                      headers=["time", "severity", "service", "body"], max_rows=max_rows)
