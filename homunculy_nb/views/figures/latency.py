"""Span latency: percentiles over time and the distribution of durations."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._common import PALETTE, empty_figure, format_ms, import_plotly, require_methods

GROUP_COLUMNS = {"name": "name", "service": "service_name"}
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")

# Bucket widths the automatic window picks from, in seconds.
_NICE_WINDOWS_S = (0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200,
                   21600, 43200, 86400)


def _group_column(by: str) -> str:
    if by not in GROUP_COLUMNS:
        raise ValueError(f"Expected by='name' or by='service', but got by={by!r}.")
    return GROUP_COLUMNS[by]


def _check_percentiles(percentiles: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(p) for p in percentiles)
    if not values or any(not 0 < p <= 100 for p in values):
        raise ValueError(f"Percentiles must lie in (0, 100], but got {tuple(percentiles)!r}.")
    return values


def auto_window(times: pd.Series, buckets: int = 60) -> pd.Timedelta:
    """Return a round bucket width that splits the time range of `times` into about `buckets` parts."""
    if times.empty:
        return pd.Timedelta(seconds=1)
    spread = (times.max() - times.min()) / pd.Timedelta(seconds=1)
    target = spread / buckets
    for seconds in _NICE_WINDOWS_S:
        if seconds >= target:
            return pd.Timedelta(seconds=seconds)
    return pd.Timedelta(seconds=_NICE_WINDOWS_S[-1])


def latency_percentiles(spans: pd.DataFrame, by: str = "name", percentiles: Sequence[float] = (50, 95, 99),
                        window: Any = None) -> pd.DataFrame:
    """Return span duration percentiles per group and time bucket.

    Columns: group, time (bucket start), count, then one `p<N>` column per percentile in ms, computed
    with linear interpolation between the closest ranks (numpy's default).
    """
    column = _group_column(by)
    percentiles = _check_percentiles(percentiles)
    names = [percentile_column(p) for p in percentiles]
    if spans.empty:
        return pd.DataFrame(columns=["group", "time", "count", *names])

    window = pd.Timedelta(window) if window is not None else auto_window(spans["start_time"])
    frame = pd.DataFrame({
        "group": spans[column].astype(str),
        "time": spans["start_time"].dt.floor(window),
        "duration_ms": spans["duration_ms"].astype(float),
    })
    rows = []
    for (group, time), durations in frame.groupby(["group", "time"], sort=True)["duration_ms"]:
        values = np.percentile(durations.to_numpy(), percentiles)
        rows.append((group, time, len(durations), *values))
    return pd.DataFrame(rows, columns=["group", "time", "count", *names])


def percentile_column(percentile: float) -> str:
    """Return the column name of a percentile: `p95`, `p99.9`."""
    return f"p{percentile:g}"


def latency(source: Any, by: str = "name", percentiles: Sequence[float] = (50, 95, 99), *,
            service: str | None = None, since: Any = None, window: Any = None, top: int = 8) -> Any:
    """Draw span duration percentiles over time, one colour per span name or service.

    Only the `top` groups with the most spans are drawn. Each percentile has its own dash style.
    `window` is the bucket width (a Timedelta or a string such as "10s"); by default about 60 buckets
    cover the time range.
    """
    require_methods(source, "spans")
    go = import_plotly()
    column = _group_column(by)
    percentiles = _check_percentiles(percentiles)

    spans = source.spans(service=service, since=since)
    if spans.empty:
        return empty_figure("No spans received yet.")
    busiest = spans[column].astype(str).value_counts().index[:top]
    spans = spans[spans[column].astype(str).isin(busiest)]
    table = latency_percentiles(spans, by, percentiles, window)

    figure = go.Figure()
    for rank, group in enumerate(busiest):
        rows = table[table["group"] == group]
        color = PALETTE[rank % len(PALETTE)]
        for index, percentile in enumerate(percentiles):
            figure.add_trace(go.Scatter(
                name=f"{group} p{percentile:g}",
                legendgroup=group,
                x=rows["time"].to_numpy(),
                y=rows[percentile_column(percentile)].to_numpy(dtype=float),
                mode="lines+markers",
                line={"color": color, "dash": DASHES[index % len(DASHES)]},
                customdata=rows["count"].to_numpy(),
                hovertemplate=f"{html.escape(group)}<br>p{percentile:g} %{{y:.1f}} ms"
                              "<br>%{customdata} spans<extra></extra>",
            ))

    figure.update_layout(
        title=f"Span latency by {by}" + (f" ({html.escape(service)})" if service else ""),
        xaxis={"title": "time (UTC)"},
        yaxis={"title": "duration (ms)", "rangemode": "tozero"},
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
        height=420,
    )
    return figure


def log_bins(durations: np.ndarray, bins: int) -> np.ndarray:
    """Return `bins + 1` log-spaced bin edges covering the positive durations."""
    positive = durations[durations > 0]
    low = positive.min() if positive.size else 0.001
    high = max(durations.max(initial=0.0), low * 1.0001)
    return np.geomspace(low, high, bins + 1)


def latency_histogram(source: Any, by: str = "service", *, service: str | None = None,
                      name: str | None = None, since: Any = None, bins: int = 40,
                      percentiles: Sequence[float] = (50, 95, 99)) -> Any:
    """Draw the distribution of span durations on log-spaced bins, one colour per group.

    Vertical lines mark the percentiles over all the selected spans. Spans that took zero time fall in
    the first bin.
    """
    require_methods(source, "spans")
    go = import_plotly()
    column = _group_column(by)
    percentiles = _check_percentiles(percentiles)
    if bins < 1:
        raise ValueError(f"bins must be at least 1, but got bins={bins}.")

    spans = source.spans(service=service, name=name, since=since)
    if spans.empty:
        return empty_figure("No spans received yet.")

    durations = spans["duration_ms"].to_numpy(dtype=float)
    edges = log_bins(durations, bins)
    centers = np.sqrt(edges[:-1] * edges[1:])
    figure = go.Figure()
    for rank, group in enumerate(spans[column].astype(str).value_counts().index):
        values = np.clip(durations[(spans[column].astype(str) == group).to_numpy()], edges[0], edges[-1])
        counts, _ = np.histogram(values, bins=edges)
        figure.add_trace(go.Bar(
            name=group, x=centers, y=counts, width=edges[1:] - edges[:-1], opacity=0.75,
            marker={"color": PALETTE[rank % len(PALETTE)]},
            customdata=np.stack([edges[:-1], edges[1:]], axis=-1),
            hovertemplate=f"{html.escape(group)}<br>%{{customdata[0]:.2f}}–%{{customdata[1]:.2f}} ms"
                          "<br>%{y} spans<extra></extra>",
        ))

    for percentile, value in zip(percentiles, np.percentile(durations, percentiles)):
        # Shapes take data values on a log axis, but annotations take the value's log10.
        figure.add_shape(type="line", x0=float(value), x1=float(value), y0=0, y1=1, yref="paper",
                         line={"dash": "dash", "color": "#444444"}, name=percentile_column(percentile))
        figure.add_annotation(x=float(np.log10(max(value, edges[0]))), y=1, yref="paper",
                              yanchor="bottom", showarrow=False,
                              text=f"p{percentile:g} {format_ms(value)}")

    figure.update_layout(
        title=f"Span durations ({len(durations)} spans)",
        barmode="overlay",
        xaxis={"title": "duration (ms)", "type": "log"},
        yaxis={"title": "spans"},
        margin={"l": 10, "r": 10, "t": 60, "b": 40},
        height=380,
    )
    return figure
