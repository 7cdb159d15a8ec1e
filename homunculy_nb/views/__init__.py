"""Plotly figures and ipywidgets over a live Collector, a saved run and a running Stack.

The figure functions return `plotly.graph_objects.Figure` and work in exported HTML. The widgets need
ipywidgets 8 and a Jupyter frontend; they load on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from .figures import (
    latency,
    latency_histogram,
    llm_usage,
    metric_chart,
    service_map,
    time_breakdown,
    turn_timings,
    waterfall,
)

_WIDGETS = {
    "ResourceDashboard": ".resources",
    "TraceExplorer": ".traces",
    "LogViewer": ".logs",
    "MetricsExplorer": ".metrics",
    "ChatPanel": ".chat",
}

__all__ = [
    "ChatPanel", "LogViewer", "MetricsExplorer", "ResourceDashboard", "TraceExplorer",
    "latency", "latency_histogram", "llm_usage", "metric_chart", "service_map", "time_breakdown",
    "turn_timings", "waterfall",
]


def __getattr__(name: str) -> Any:
    if name in _WIDGETS:
        value = getattr(importlib.import_module(_WIDGETS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
