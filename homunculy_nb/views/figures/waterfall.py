"""The waterfall of one trace: a bar per span in tree order, coloured by service, critical path marked."""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from .._common import (
    CRITICAL_PATH_COLOR,
    ERROR_COLOR,
    empty_figure,
    format_attributes,
    format_ms,
    import_plotly,
    is_error,
    milliseconds_between,
    require_methods,
    service_color,
    short_id,
)

# Attributes worth a line in the hover label, in this order, before the rest.
KEY_ATTRIBUTES = (
    "http.request.method", "http.method", "http.route", "url.path", "http.target",
    "http.response.status_code", "http.status_code", "server.address", "db.system",
    "db.statement", "db.query.text", "gen_ai.request.model", "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens", "error.type", "exception.type",
)


def tree_order(spans: pd.DataFrame) -> pd.DataFrame:
    """Return the spans of one trace depth-first, children by start time, with `depth` and `self_time_ms`.

    A span whose parent is not in the frame is a root, so a trace with lost spans still renders.
    Self time is the duration minus the union of the children's intervals, clipped to the span.
    """
    spans = spans.reset_index(drop=True)
    ids = set(spans["span_id"])
    children: dict[Any, list[int]] = defaultdict(list)
    roots = []
    for index, parent in enumerate(spans["parent_span_id"]):
        if isinstance(parent, str) and parent and parent in ids:
            children[parent].append(index)
        else:
            roots.append(index)

    starts = spans["start_time"]
    order: list[int] = []
    depths: list[int] = []
    stack = [(index, 0) for index in sorted(roots, key=lambda i: starts[i], reverse=True)]
    while stack:
        index, depth = stack.pop()
        order.append(index)
        depths.append(depth)
        kids = sorted(children.get(spans.at[index, "span_id"], []), key=lambda i: starts[i], reverse=True)
        stack.extend((kid, depth + 1) for kid in kids)

    ordered = spans.iloc[order].reset_index(drop=True)
    ordered["depth"] = depths
    ordered["self_time_ms"] = [
        _self_time_ms(spans, index, children.get(spans.at[index, "span_id"], [])) for index in order
    ]
    return ordered


def _self_time_ms(spans: pd.DataFrame, index: int, kids: list[int]) -> float:
    start, end = spans.at[index, "start_time"], spans.at[index, "end_time"]
    covered = pd.Timedelta(0)
    cursor = start
    for kid in sorted(kids, key=lambda i: spans.at[i, "start_time"]):
        kid_start = max(spans.at[kid, "start_time"], cursor)
        kid_end = min(spans.at[kid, "end_time"], end)
        if kid_end > kid_start:
            covered += kid_end - kid_start
            cursor = kid_end
    return max((end - start - covered) / pd.Timedelta(milliseconds=1), 0.0)


def critical_path(spans: pd.DataFrame) -> pd.DataFrame:
    """Return the critical path of one trace as segments: span_id, start_time, end_time, duration_ms.

    Walking back from the end of each root, the path follows the child that finished last before the
    current point and charges the gaps between children to the parent. A child that overlaps the
    chosen child is not on the path. Child intervals are clipped to their parent.
    """
    columns = ["span_id", "start_time", "end_time", "duration_ms"]
    if spans.empty:
        return pd.DataFrame(columns=columns)

    spans = spans.reset_index(drop=True)
    by_id = {span_id: index for index, span_id in enumerate(spans["span_id"])}
    children: dict[Any, list[int]] = defaultdict(list)
    roots = []
    for index, parent in enumerate(spans["parent_span_id"]):
        if isinstance(parent, str) and parent in by_id:
            children[parent].append(index)
        else:
            roots.append(index)

    segments: list[tuple[Any, pd.Timestamp, pd.Timestamp]] = []
    starts, ends = spans["start_time"], spans["end_time"]

    def walk(index: int, lower: pd.Timestamp, upper: pd.Timestamp) -> None:
        span_id = spans.at[index, "span_id"]
        start, cursor = max(starts[index], lower), min(ends[index], upper)
        pending = [(max(starts[kid], start), min(ends[kid], cursor), kid) for kid in children[span_id]]
        pending = [item for item in pending if item[1] > item[0]]
        while cursor > start:
            ready = [item for item in pending if item[1] <= cursor]
            if not ready:
                break
            kid_start, kid_end, kid = max(ready, key=lambda item: (item[1], item[0]))
            if kid_end < cursor:
                segments.append((span_id, kid_end, cursor))
            walk(kid, kid_start, kid_end)
            cursor = kid_start
            pending = [item for item in pending if item[2] != kid]
        if cursor > start:
            segments.append((span_id, start, cursor))

    for root in roots:
        walk(root, starts[root], ends[root])

    frame = pd.DataFrame(segments, columns=columns[:3])
    frame = frame.sort_values("start_time", kind="stable").reset_index(drop=True)
    frame["duration_ms"] = (frame["end_time"] - frame["start_time"]) / pd.Timedelta(milliseconds=1)
    return frame


def waterfall(source: Any, trace_id: str, *, height: int | None = None) -> Any:
    """Draw one trace as a waterfall: a bar per span in tree order, offsets and widths in milliseconds.

    Bars are coloured by service, and error spans get a red outline and a ✕. A thin dark bar inside
    each span marks the time it spends on the critical path. Hover shows duration, self time and key
    attributes. Each bar's `customdata` starts with its span id, which widgets use on click.
    """
    require_methods(source, "trace")
    go = import_plotly()

    try:
        spans = source.trace(trace_id)
    except LookupError:
        spans = None
    if spans is None or spans.empty:
        return empty_figure(f"No spans for trace {trace_id} yet.")
    if "depth" not in spans.columns or "self_time_ms" not in spans.columns:
        spans = tree_order(spans)
    spans = spans.reset_index(drop=True)

    origin = spans["start_time"].min()
    offsets = milliseconds_between(spans["start_time"], origin)
    widths = milliseconds_between(spans["end_time"], origin) - offsets
    rows = np.arange(len(spans))
    labels = [
        "\u00a0\u00a0" * int(depth) + html.escape(str(name))
        for depth, name in zip(spans["depth"], spans["name"])
    ]
    errors = np.array([is_error(code) for code in spans["status_code"]], dtype=bool)
    hover = [_hover_text(spans.iloc[i], widths[i]) for i in rows]

    figure = go.Figure()
    for service in pd.unique(spans["service_name"]):
        mask = (spans["service_name"] == service).to_numpy()
        color = service_color(service)
        figure.add_trace(go.Bar(
            name=str(service),
            orientation="h",
            y=rows[mask],
            x=widths[mask],
            base=offsets[mask],
            marker={
                "color": color,
                "line": {"color": np.where(errors[mask], ERROR_COLOR, color),
                         "width": np.where(errors[mask], 3, 0)},
            },
            text=np.where(errors[mask], "✕ " + np.array([format_ms(w) for w in widths[mask]]),
                          [format_ms(w) for w in widths[mask]]),
            textposition="auto",
            customdata=np.stack([spans["span_id"].to_numpy(dtype=object)[mask],
                                 np.array(hover, dtype=object)[mask]], axis=-1),
            hovertemplate="%{customdata[1]}<extra></extra>",
        ))

    _add_critical_path(go, figure, spans, origin)

    root = spans.iloc[0]
    total = float((spans["end_time"].max() - origin) / pd.Timedelta(milliseconds=1))
    figure.update_layout(
        title=f"{html.escape(str(root['service_name']))}: {html.escape(str(root['name']))} · "
              f"trace {short_id(trace_id)} · {format_ms(total)}",
        barmode="overlay",
        bargap=0.25,
        height=height or max(220, 70 + 24 * len(spans)),
        xaxis={"title": "time since trace start (ms)", "rangemode": "tozero"},
        yaxis={"tickmode": "array", "tickvals": rows, "ticktext": labels, "autorange": "reversed",
               "automargin": True},
        legend={"title": "service"},
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
        hoverlabel={"align": "left"},
    )
    return figure


def _add_critical_path(go: Any, figure: Any, spans: pd.DataFrame, origin: pd.Timestamp) -> None:
    segments = critical_path(spans)
    if segments.empty:
        return

    row_of = {span_id: row for row, span_id in enumerate(spans["span_id"])}
    rows = np.array([row_of[span_id] for span_id in segments["span_id"]])
    offsets = milliseconds_between(segments["start_time"], origin)
    figure.add_trace(go.Bar(
        name="critical path",
        orientation="h",
        y=rows,
        x=segments["duration_ms"].to_numpy(dtype=float),
        base=offsets,
        width=0.18,
        marker={"color": CRITICAL_PATH_COLOR},
        customdata=np.stack([segments["span_id"].to_numpy(dtype=object),
                             np.array([format_ms(d) for d in segments["duration_ms"]], dtype=object)],
                            axis=-1),
        hovertemplate="critical path: %{customdata[1]}<extra></extra>",
    ))


def _hover_text(span: pd.Series, duration_ms: float) -> str:
    lines = [
        f"<b>{html.escape(str(span['name']))}</b>",
        f"service: {html.escape(str(span['service_name']))}",
        f"duration: {format_ms(duration_ms)} · self: {format_ms(span.get('self_time_ms'))}",
    ]
    if is_error(span.get("status_code")):
        message = span.get("status_message")
        lines.append(f"<b>error</b>: {html.escape(str(message)) if isinstance(message, str) else ''}")

    attributes = span.get("attributes")
    if isinstance(attributes, dict) and attributes:
        key_first = {key: attributes[key] for key in KEY_ATTRIBUTES if key in attributes}
        rest = {key: value for key, value in attributes.items() if key not in key_first}
        text = format_attributes(key_first, limit=8)
        if rest and len(key_first) < 8:
            text = "<br>".join(part for part in (text, format_attributes(rest, limit=8 - len(key_first))) if part)
        if text:
            lines.append(text)
    return "<br>".join(lines)
