"""Plotly figure functions over a collector or a saved run. Each returns a `plotly.graph_objects.Figure`."""

from .latency import latency, latency_histogram
from .llm_usage import llm_usage
from .metric_chart import metric_chart
from .service_map import service_map
from .time_breakdown import time_breakdown
from .turn_timings import turn_timings
from .waterfall import waterfall

__all__ = ["latency", "latency_histogram", "llm_usage", "metric_chart", "service_map", "time_breakdown",
           "turn_timings", "waterfall"]
