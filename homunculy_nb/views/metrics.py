"""MetricsExplorer: pick a service and a metric, see its chart; follows new points."""

from __future__ import annotations

import html
import threading
from typing import Any

from ._common import import_plotly, import_widgets, require_methods
from ._live import DEFAULT_INTERVAL, Throttle
from ._widgets import error_html, replace_figure, serialized, subscribe
from .figures.metric_chart import metric_chart

widgets = import_widgets()

ALL = "(all services)"


class MetricsExplorer(widgets.VBox):
    """A service picker, a metric picker and the metric's chart (see `metric_chart`).

    With `live`, new points of the chosen metric redraw the chart at most twice a second.
    """

    def __init__(self, source: Any, *, live: bool = True, interval: float = DEFAULT_INTERVAL) -> None:
        require_methods(source, "metrics")
        self._view_lock = threading.RLock()
        go = import_plotly()

        self._source = source
        self._drawing_suspended = False
        self.service = widgets.Dropdown(description="service", options=[ALL], value=ALL)
        self.metric = widgets.Dropdown(description="metric", options=[], layout=widgets.Layout(width="420px"))
        self.rate = widgets.Checkbox(description="per-second rate (sums)", indent=False)
        self.figure = go.FigureWidget()
        self._message = widgets.HTML()

        self.service.observe(lambda _: self._update_metrics(), names="value")
        self.metric.observe(lambda _: self.draw(), names="value")
        self.rate.observe(lambda _: self.draw(), names="value")
        super().__init__([widgets.HBox([self.service, self.metric, self.rate]), self._message, self.figure])

        self._throttle = Throttle(self._apply, interval, on_error=self._show_error)
        self._unsubscribe = subscribe(source, self._throttle, ("metrics",)) if live else None
        self.refresh()

    @serialized
    def refresh(self) -> None:
        """Query the services and metric names again and redraw the chart."""
        points = self._source.metrics()
        services = sorted({str(s) for s in points["service_name"].dropna()})
        if [ALL, *services] != list(self.service.options):
            current = self.service.value
            self.service.options = [ALL, *services]
            self.service.value = current if current in self.service.options else ALL
        self._update_metrics(points)

    @serialized
    def _update_metrics(self, points: Any = None) -> None:
        service = None if self.service.value == ALL else self.service.value
        points = self._source.metrics(service=service) if points is None or service else points
        names = sorted({str(name) for name in points["name"].dropna()})
        if names != list(self.metric.options):
            current = self.metric.value
            self._drawing_suspended = True
            try:
                self.metric.options = names
                if current in names:
                    self.metric.value = current
                elif names:
                    self.metric.value = names[0]
            finally:
                self._drawing_suspended = False
        self.draw()

    @serialized
    def draw(self) -> None:
        """Draw the chosen metric of the chosen service."""
        if self._drawing_suspended:
            return
        if not self.metric.value:
            self._message.value = html.escape("No metrics received yet.")
            return
        service = None if self.service.value == ALL else self.service.value
        replace_figure(self.figure, metric_chart(self._source, self.metric.value, service=service,
                                                 rate=self.rate.value))
        self._message.value = ""

    @serialized
    def _apply(self, batches: list[Any]) -> None:
        names = set()
        for _, frame in batches:
            names.update(str(name) for name in frame["name"])
        if names - set(self.metric.options) or self.service.value == ALL and not self.metric.options:
            self.refresh()
        elif self.metric.value in names:
            self.draw()

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
        return f"<MetricsExplorer service={self.service.value!r} metric={self.metric.value!r}>"
