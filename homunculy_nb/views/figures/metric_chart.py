"""Metric time series: gauges and sums as lines, histograms as percentiles from their bucket bounds."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._common import PALETTE, empty_figure, import_plotly, require_methods
from .latency import DASHES, _check_percentiles, percentile_column


def is_cumulative(temporality: object) -> bool:
    """Tell whether an OTLP aggregation temporality (name or number) is CUMULATIVE."""
    return "CUMULATIVE" in str(temporality).upper() or str(temporality) == "2"


def bucket_quantile(bounds: Sequence[float], counts: Sequence[float], quantile: float,
                    minimum: float | None = None, maximum: float | None = None) -> float:
    """Estimate a quantile (0..1) of an explicit-bucket histogram by linear interpolation in its bucket.

    Bucket i contains the values in (bounds[i-1], bounds[i]]. The first bucket starts at `minimum` when
    known, else at 0 (or at its upper bound when that is negative). The overflow bucket ends at `maximum`
    when known, else the estimate is the last bound. The result is clamped to [minimum, maximum] when they
    are given. Returns NaN for an empty histogram.
    """
    counts = np.asarray(counts, dtype=float)
    bounds = np.asarray(bounds, dtype=float)
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"A histogram with {len(bounds)} bounds needs {len(bounds) + 1} bucket counts, "
                         f"but got {len(counts)}.")
    total = counts.sum()
    if total <= 0:
        return float("nan")

    rank = quantile * total
    cumulative = np.cumsum(counts)
    bucket = int(np.searchsorted(cumulative, rank, side="left"))
    bucket = min(bucket, len(counts) - 1)

    if bucket == len(bounds):
        if maximum is None or np.isnan(maximum):
            return float(bounds[-1]) if len(bounds) else float("nan")
        lower, upper = (bounds[-1] if len(bounds) else minimum or 0.0), maximum
    elif bucket == 0:
        upper = bounds[0]
        if minimum is not None and not np.isnan(minimum):
            lower = minimum
        else:
            lower = min(0.0, upper)
    else:
        lower, upper = bounds[bucket - 1], bounds[bucket]

    below = cumulative[bucket - 1] if bucket > 0 else 0.0
    fraction = (rank - below) / counts[bucket] if counts[bucket] else 1.0
    value = lower + (upper - lower) * min(max(fraction, 0.0), 1.0)
    if minimum is not None and not np.isnan(minimum):
        value = max(value, minimum)
    if maximum is not None and not np.isnan(maximum):
        value = min(value, maximum)
    return float(value)


def series_label(service: object, attributes: object) -> str:
    """Return the legend label of one series: the service and its attributes as `k=v`."""
    pairs = ", ".join(f"{key}={value}" for key, value in sorted((attributes or {}).items()))
    return f"{service} {{{pairs}}}" if pairs else str(service)


def _series(points: pd.DataFrame) -> pd.Series:
    return pd.Series([series_label(service, attributes)
                      for service, attributes in zip(points["service_name"], points["attributes"])],
                     index=points.index, dtype=object)


def _optional(value: object) -> float | None:
    if value is None or value is pd.NA:
        return None
    value = float(value)
    return None if np.isnan(value) else value


def histogram_intervals(points: pd.DataFrame) -> pd.DataFrame:
    """Turn histogram points into one row per reporting interval: series, time, bounds, counts, sum, min, max.

    Cumulative points become the difference from the previous point of the same series, so each row
    covers only its own interval. Their min and max are then unknown (None), because OTLP reports them
    for the whole cumulative window. A point that starts a new window (first point, a new start time,
    changed bounds or a count that went down) is taken as it is.
    """
    rows = []
    points = points.assign(series=_series(points)).sort_values(["series", "time"], kind="stable")
    for series, group in points.groupby("series", sort=True):
        previous = None
        for point in group.itertuples(index=False):
            counts = np.asarray(point.bucket_counts, dtype=float)
            bounds = np.asarray(point.explicit_bounds, dtype=float)
            row = [series, point.time, bounds, counts, _optional(point.sum), _optional(point.min),
                   _optional(point.max)]
            if previous is not None and is_cumulative(point.aggregation_temporality):
                same_window = (previous.start_time == point.start_time
                               and np.array_equal(np.asarray(previous.explicit_bounds, dtype=float), bounds))
                before = np.asarray(previous.bucket_counts, dtype=float)
                if same_window and before.shape == counts.shape and (counts >= before).all():
                    total = None
                    if _optional(point.sum) is not None and _optional(previous.sum) is not None:
                        total = point.sum - previous.sum
                    row = [series, point.time, bounds, counts - before, total, None, None]
            rows.append(row)
            previous = point
    return pd.DataFrame(rows, columns=["series", "time", "bounds", "counts", "sum", "min", "max"])


def histogram_percentiles(points: pd.DataFrame, percentiles: Sequence[float] = (50, 95, 99)) -> pd.DataFrame:
    """Return the percentiles of each histogram interval: series, time, count, mean, `p<N>` columns."""
    percentiles = _check_percentiles(percentiles)
    names = [percentile_column(p) for p in percentiles]
    intervals = histogram_intervals(points) if not points.empty else pd.DataFrame()
    rows = []
    for interval in intervals.itertuples(index=False):
        count = float(interval.counts.sum())
        if count == 0:
            continue
        values = [bucket_quantile(interval.bounds, interval.counts, p / 100, interval.min, interval.max)
                  for p in percentiles]
        mean = interval.sum / count if interval.sum is not None else float("nan")
        rows.append((interval.series, interval.time, int(count), mean, *values))
    return pd.DataFrame(rows, columns=["series", "time", "count", "mean", *names])


def value_series(points: pd.DataFrame, rate: bool = False) -> pd.DataFrame:
    """Return gauge or sum points as series, time, value; with `rate`, cumulative sums become per-second rates."""
    frame = pd.DataFrame({
        "series": _series(points), "time": points["time"], "value": points["value"].astype(float),
        "cumulative": [is_cumulative(t) for t in points["aggregation_temporality"]],
    }).sort_values(["series", "time"], kind="stable")
    if not rate:
        return frame[["series", "time", "value"]].reset_index(drop=True)

    parts = []
    for _, group in frame.groupby("series", sort=True):
        seconds = group["time"].diff() / pd.Timedelta(seconds=1)
        change = group["value"].diff().where(group["cumulative"], group["value"])
        value = change / seconds
        # A counter reset (the value went down) starts over; its first interval has no rate.
        value = value.where(change >= 0)
        parts.append(group.assign(value=value).iloc[1:] if len(group) > 1 else group.iloc[0:0])
    if not parts:
        return pd.DataFrame(columns=["series", "time", "value"])
    return pd.concat(parts)[["series", "time", "value"]].reset_index(drop=True)


def metric_chart(source: Any, name: str, *, service: str | None = None,
                 percentiles: Sequence[float] = (50, 95, 99), rate: bool = False) -> Any:
    """Draw metric `name` over time: gauges and sums as lines, histograms as percentiles.

    One colour per series (service and attribute set). Histogram percentiles are estimated from the
    bucket bounds of each reporting interval (see `bucket_quantile`); exponential histograms are first
    turned into explicit buckets. Summaries are drawn as the quantiles they carry. With `rate`, cumulative sums are
    drawn as a per-second rate.
    """
    require_methods(source, "metrics")
    go = import_plotly()

    points = source.metrics(name=name, service=service)
    if points.empty:
        return empty_figure(f"No points for metric {name} yet.")

    kind = str(points["type"].iloc[0])
    unit = str(points["unit"].iloc[0] or "") if "unit" in points.columns else ""
    description = points["description"].iloc[0] if "description" in points.columns else ""
    figure = go.Figure()

    if kind == "histogram":
        table = histogram_percentiles(points, percentiles)
        for rank, (series, rows) in enumerate(table.groupby("series", sort=True)):
            for index, percentile in enumerate(_check_percentiles(percentiles)):
                _add_line(go, figure, rows, percentile_column(percentile), f"{series} p{percentile:g}",
                          series, rank, DASHES[index % len(DASHES)], unit)
    elif kind == "exponential_histogram":
        converted = points.assign(**_explicit_columns(points["exponential_buckets"]))
        table = histogram_percentiles(converted, percentiles)
        for rank, (series, rows) in enumerate(table.groupby("series", sort=True)):
            for index, percentile in enumerate(_check_percentiles(percentiles)):
                _add_line(go, figure, rows, percentile_column(percentile), f"{series} p{percentile:g}",
                          series, rank, DASHES[index % len(DASHES)], unit)
    elif kind == "summary":
        table = _summary_quantiles(points)
        for rank, (series, rows) in enumerate(table.groupby("series", sort=True)):
            for index, (quantile, part) in enumerate(rows.groupby("quantile", sort=True)):
                _add_line(go, figure, part, "value", f"{series} q{quantile:g}", series, rank,
                          DASHES[index % len(DASHES)], unit)
    else:
        table = value_series(points, rate=rate)
        for rank, (series, rows) in enumerate(table.groupby("series", sort=True)):
            _add_line(go, figure, rows, "value", series, series, rank, "solid",
                      f"{unit}/s" if rate else unit)

    title = f"{html.escape(name)} ({kind})"
    if isinstance(description, str) and description:
        title += f"<br><sup>{html.escape(description)}</sup>"
    figure.update_layout(
        title=title,
        xaxis={"title": "time (UTC)"},
        yaxis={"title": html.escape(f"{unit}/s" if rate and kind in ("sum", "gauge") else unit) or "value"},
        margin={"l": 10, "r": 10, "t": 60, "b": 40},
        height=380,
    )
    return figure


def _add_line(go: Any, figure: Any, rows: pd.DataFrame, column: str, label: str, group: str, rank: int,
              dash: str, unit: str) -> None:
    figure.add_trace(go.Scatter(
        name=html.escape(label), legendgroup=html.escape(group),
        x=rows["time"].to_numpy(), y=rows[column].to_numpy(dtype=float),
        mode="lines+markers", line={"color": PALETTE[rank % len(PALETTE)], "dash": dash},
        hovertemplate=f"{html.escape(label)}<br>%{{y:.4g}} {html.escape(unit)}<extra></extra>",
    ))


def _summary_quantiles(points: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for series, time, quantiles in zip(_series(points), points["time"], points["quantiles"]):
        for quantile, value in _quantile_pairs(quantiles):
            rows.append((series, time, quantile, value))
    return pd.DataFrame(rows, columns=["series", "time", "quantile", "value"])


def _quantile_pairs(quantiles: object) -> list[tuple[float, float]]:
    if isinstance(quantiles, dict):
        return [(float(q), float(v)) for q, v in quantiles.items()]
    pairs = []
    for item in quantiles if quantiles is not None else []:
        if isinstance(item, dict):
            pairs.append((float(item["quantile"]), float(item["value"])))
        else:
            pairs.append((float(item[0]), float(item[1])))
    return pairs


def exponential_to_explicit(buckets: dict) -> tuple[list[float], list[float]]:
    """Turn an OTLP exponential histogram's buckets into explicit bounds and counts.

    With base = 2 ** 2 ** -scale, positive bucket i contains (base**i, base**(i+1)], negative bucket i
    contains [-base**(i+1), -base**i), and the zero bucket contains [-zero_threshold, zero_threshold]. Gaps between
    them become empty buckets, so the explicit form covers the same values.
    """
    base = 2.0 ** (2.0 ** -int(buckets.get("scale", 0)))
    threshold = float(buckets.get("zero_threshold") or 0.0)
    intervals = []
    negative = buckets.get("negative") or {}
    offset = int(negative.get("offset", 0))
    for index in reversed(range(len(negative.get("bucket_counts") or []))):
        exponent = offset + index
        intervals.append((-base ** (exponent + 1), -base ** exponent, float(negative["bucket_counts"][index])))
    intervals.append((-threshold, threshold, float(buckets.get("zero_count") or 0)))
    positive = buckets.get("positive") or {}
    offset = int(positive.get("offset", 0))
    for index, count in enumerate(positive.get("bucket_counts") or []):
        exponent = offset + index
        intervals.append((base ** exponent, base ** (exponent + 1), float(count)))

    bounds: list[float] = [intervals[0][0]]
    counts: list[float] = [0.0]
    for lower, upper, count in intervals:
        if lower > bounds[-1]:
            bounds.append(lower)
            counts.append(0.0)
        bounds.append(upper)
        counts.append(count)
    counts.append(0.0)
    return bounds, counts


def _explicit_columns(buckets: pd.Series) -> dict[str, list[Any]]:
    converted = [exponential_to_explicit(item) if isinstance(item, dict) else ([], [0.0]) for item in buckets]
    return {"explicit_bounds": [bounds for bounds, _ in converted],
            "bucket_counts": [counts for _, counts in converted]}
