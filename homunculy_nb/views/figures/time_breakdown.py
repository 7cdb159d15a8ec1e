"""Time breakdown of each trace: LLM, TTS, database, network and the services' own work."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from .._common import empty_figure, import_plotly, require_methods, short_id
from .waterfall import critical_path, tree_order

CATEGORIES = ("LLM", "TTS", "database", "network", "compute")
CATEGORY_COLORS = {"LLM": "#AB63FA", "TTS": "#FFA15A", "database": "#00CC96", "network": "#19D3F3",
                   "compute": "#B0B0B0"}
_CLIENT_KINDS = {"CLIENT", "SPAN_KIND_CLIENT", "3"}


def span_category(name: object, kind: object, attributes: object) -> str | None:
    """Return the category a span's own attributes give it: LLM, TTS or database, else None.

    LLM: any `gen_ai.*` attribute. TTS: a `tts.*` attribute, or a span name, server address or URL
    naming TTS, text-to-speech or ElevenLabs. Database: `db.system` (or `db.system.name`).
    """
    attributes = attributes if isinstance(attributes, dict) else {}
    keys = [str(key) for key in attributes]
    if any(key.startswith("gen_ai.") for key in keys):
        return "LLM"

    text = f"{name} {attributes.get('server.address', '')} {attributes.get('url.full', '')}".lower()
    if any(key.startswith("tts.") for key in keys) or "tts" in text or "elevenlabs" in text \
            or "text-to-speech" in text:
        return "TTS"
    if attributes.get("db.system") or attributes.get("db.system.name"):
        return "database"
    return None


def span_categories(spans: pd.DataFrame) -> dict[Any, str]:
    """Return the category of each span of one trace, by span id.

    A span's own LLM, TTS or database category comes first. Next comes the category of its nearest
    categorized ancestor, so the LLM server's spans under an LLM call count as LLM. A CLIENT span
    without either is "network", and any other span is "compute".
    """
    ordered = tree_order(spans)
    parent_of = dict(zip(ordered["span_id"], ordered["parent_span_id"]))
    categories: dict[Any, str] = {}
    inherited: dict[Any, str | None] = {}
    for span in ordered.itertuples(index=False):
        own = span_category(span.name, span.kind, span.attributes)
        above = inherited.get(parent_of.get(span.span_id))
        inherited[span.span_id] = own or above
        if own or above:
            categories[span.span_id] = own or above
        elif str(span.kind).upper() in _CLIENT_KINDS:
            categories[span.span_id] = "network"
        else:
            categories[span.span_id] = "compute"
    return categories


def time_breakdown_table(spans: pd.DataFrame) -> pd.DataFrame:
    """Return, per trace, the milliseconds of its critical path in each category, plus root name and start.

    The critical path (see `critical_path`) covers each moment of the trace once, so the categories
    add up to the trace's duration: a child that runs beside a longer sibling adds nothing.
    """
    rows = []
    for trace_id, trace in spans.groupby("trace_id", sort=False):
        categories = span_categories(trace)
        totals = dict.fromkeys(CATEGORIES, 0.0)
        for segment in critical_path(trace).itertuples(index=False):
            totals[categories[segment.span_id]] += float(segment.duration_ms)

        ordered = tree_order(trace)
        duration = (ordered["end_time"].max() - ordered["start_time"].min()) / pd.Timedelta(milliseconds=1)
        rows.append({"trace_id": trace_id, "root_name": ordered.iloc[0]["name"],
                     "start_time": ordered["start_time"].min(), "duration_ms": duration, **totals})
    columns = ["trace_id", "root_name", "start_time", "duration_ms", *CATEGORIES]
    return pd.DataFrame(rows, columns=columns).sort_values("start_time", kind="stable").reset_index(drop=True)


def time_breakdown(source: Any, trace_ids: Any = None, *, service: str | None = None, limit: int = 30) -> Any:
    """Draw the critical path of each trace split into LLM, TTS, database, network and compute (stacked bars).

    Takes the given `trace_ids`, else the `limit` latest traces (of `service`, when given).
    """
    require_methods(source, "spans", "traces")
    go = import_plotly()

    if trace_ids is None:
        traces = source.traces(service=service)
        if traces.empty:
            return empty_figure("No traces received yet.")
        trace_ids = list(traces.sort_values("start_time")["trace_id"].tail(limit))
    trace_ids = list(trace_ids)
    spans = pd.concat([source.spans(trace_id=trace_id) for trace_id in trace_ids], ignore_index=True) \
        if trace_ids else pd.DataFrame()
    if spans.empty:
        return empty_figure("No spans for these traces.")

    table = time_breakdown_table(spans)
    labels = [f"{html.escape(str(name))} {short_id(trace_id)}"
              for name, trace_id in zip(table["root_name"], table["trace_id"])]
    figure = go.Figure()
    for category in CATEGORIES:
        figure.add_trace(go.Bar(
            name=category, orientation="h", y=labels, x=table[category].to_numpy(dtype=float),
            marker={"color": CATEGORY_COLORS[category]},
            hovertemplate=f"%{{y}}<br>{category}: %{{x:.1f}} ms<extra></extra>",
        ))
    figure.update_layout(
        title="Where the time goes per trace (critical path by category)", barmode="stack",
        height=max(260, 80 + 26 * len(table)), xaxis={"title": "ms"},
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return figure
