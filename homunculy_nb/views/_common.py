"""Helpers shared by the figures and widgets: imports, colours, status codes, time offsets."""

from __future__ import annotations

import html
import threading
from typing import Any

import numpy as np
import pandas as pd

NOTEBOOK_EXTRA = "pip install 'homunculy-nb[notebook]'"

# Plotly's default qualitative palette (plotly.colors.qualitative.Plotly), copied so that picking a
# colour does not import plotly.
PALETTE = (
    "#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A",
    "#19D3F3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
)
ERROR_COLOR = "#D62728"
CRITICAL_PATH_COLOR = "#222222"

# OTLP Status.code: 0 UNSET, 1 OK, 2 ERROR. Collectors store it as a name or as the number.
_ERROR_STATUS = {"ERROR", "STATUS_CODE_ERROR", "2"}


def import_plotly() -> Any:
    """Import `plotly.graph_objects`, or raise an ImportError that names the extra to install."""
    try:
        import plotly.graph_objects as go
    except ImportError as exc:
        raise ImportError(f"The views need plotly. Install it with `{NOTEBOOK_EXTRA}`.") from exc
    return go


def import_widgets() -> Any:
    """Import `ipywidgets`, or raise an ImportError that names the extra to install."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError(f"The widgets need ipywidgets 8. Install it with `{NOTEBOOK_EXTRA}`.") from exc
    return ipywidgets


_service_colors: dict[str, str] = {}
_service_colors_lock = threading.Lock()


def service_color(service: object) -> str:
    """Return the colour of a service: the next palette colour on first use, the same one afterwards.

    Services get distinct colours in the order the kernel first draws them, so every figure of a session
    shows a service in one colour. After ten services the palette repeats.
    """
    name = str(service)
    with _service_colors_lock:
        if name not in _service_colors:
            _service_colors[name] = PALETTE[len(_service_colors) % len(PALETTE)]
        return _service_colors[name]


def is_error(status_code: object) -> bool:
    """Tell whether an OTLP span status code (name or number) means ERROR."""
    if status_code is None or status_code is pd.NA:
        return False
    return str(status_code).upper() in _ERROR_STATUS


def error_mask(status_codes: pd.Series) -> np.ndarray:
    """Return a boolean array, True where the span status is ERROR."""
    return np.array([is_error(code) for code in status_codes], dtype=bool)


def require_methods(source: object, *methods: str) -> None:
    """Raise TypeError unless `source` has the collector query methods the caller needs."""
    missing = [name for name in methods if not callable(getattr(source, name, None))]
    if missing:
        raise TypeError(
            f"Expected a Collector or a saved run from `open_run()`, but {type(source).__name__} "
            f"has no {', '.join(f'`{name}()`' for name in missing)}. Pass the collector or "
            f"`homunculy_nb.open_run(path)`."
        )


def milliseconds_between(times: pd.Series, origin: pd.Timestamp) -> np.ndarray:
    """Return the offsets of `times` from `origin` in milliseconds as a float array."""
    return ((times - origin) / pd.Timedelta(milliseconds=1)).to_numpy(dtype=float)


def format_ms(value: float | None) -> str:
    """Format a duration in milliseconds for a label: `850 µs`, `12.3 ms`, `4.21 s`."""
    if value is None or pd.isna(value):
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} µs"
    if value < 1000:
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value / 1000:.2f} s"


def short_id(identifier: object, length: int = 8) -> str:
    """Return the first characters of a hex trace or span id for labels."""
    return str(identifier)[:length]


def format_attributes(attributes: object, limit: int = 8, width: int = 80) -> str:
    """Render the first `limit` attributes, in dict order, as escaped `key: value` lines for a hover label."""
    if not isinstance(attributes, dict) or not attributes:
        return ""

    lines = []
    for key in list(attributes)[:limit]:
        value = str(attributes[key])
        if len(value) > width:
            value = value[: width - 1] + "…"
        lines.append(f"{html.escape(str(key))}: {html.escape(value)}")
    if len(attributes) > limit:
        lines.append(f"… {len(attributes) - limit} more")
    return "<br>".join(lines)


def empty_figure(message: str) -> Any:
    """Return a figure that shows `message` in place of data."""
    go = import_plotly()
    figure = go.Figure()
    figure.add_annotation(text=html.escape(message), showarrow=False, x=0.5, y=0.5,
                          xref="paper", yref="paper", font={"size": 14})
    figure.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=200,
                         margin={"l": 20, "r": 20, "t": 30, "b": 20})
    return figure
