"""Where the time of each trace goes: LLM, TTS, database, network and the services' own work."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from .._common import empty_figure, import_plotly, require_methods, short_id
from .waterfall import tree_order

CATEGORIES = ("LLM", "TTS", "database", "network", "compute")
CATEGORY_COLORS = {"LLM": "#AB63FA", "TTS": "#FFA15A", "database": "#00CC96", "network": "#19D3F3",
                   "compute": "#B0B0B0"}
# Categories that also claim the spans below them: the LLM server's own spans are LLM time.
_INHERITED = {"LLM", "TTS", "database"}
_CLIENT_KINDS = {"CLIENT", "SPAN_KIND_CLIENT", "3"}


def span_category(name: object, kind: object, attributes: object) -> str | None:
    """Return the category a span's own attributes give it, or None when they give none.

    LLM: any `gen_ai.*` attribute. TTS: a `tts.*` attribute, or a span name or server address naming
    TTS or ElevenLabs. Database: `db.system`. Network: any other CLIENT span.
    """
    attributes = attributes if isinstance(attributes, dict) else {}
    keys = [str(key) for key in attributes]
    if any(key.startswith("gen_ai.") for key in keys):
        return "LLM"
    text = f"{name} {attributes.get('server.address', '')} {attributes.get('url.full', '')}".lower()
    if any(key.startswith("tts.") for key in keys) or "tts" in text.split() or "elevenlabs" in text \
            or "text-to-speech" in text or "tts" in str(name).lower():
        return "TTS"
    if attributes.get("db.system") or attributes.get("db.system.name"):
        return "database"
    if str(kind).upper() in _CLIENT_KINDS:
        return "network"
    return None


def time_breakdown_table(spans: pd.DataFrame) -> pd.DataFrame:
    """Return, per trace, the self time in ms of each category, plus root name, start time and duration.

    Each span's self time goes to its own category, else to the nearest ancestor's LLM, TTS or database
    category, else to "compute". Self times of one trace add up to the time its spans were busy, so
    concurrent children can make the sum exceed the trace duration.
    """
    rows = []
    for trace_id, trace in spans.groupby("trace_id", sort=False):
        ordered = tree_order(trace)
        category_of: dict[Any, str] = {}
        totals = dict.fromkeys(CATEGORIES, 0.0)
        parent_of = dict(zip(ordered["span_id"], ordered["parent_span_id"]))
        for span in ordered.itertuples(index=False):
            category = span_category(span.name, span.kind, span.attributes)
            if category is None:
                parent_category = category_of.get(parent_of.get(span.span_id))
                category = parent_category if parent_category in _INHERITED else "compute"
            category_of[span.span_id] = category
            totals[category] += float(span.self_time_ms)
        root = ordered.iloc[0]
        duration = (ordered["end_time"].max() - ordered["start_time"].min()) / pd.Timedelta(milliseconds=1)
        rows.append({"trace_id": trace_id, "root_name": root["name"], "start_time": ordered["start_time"].min(),
                     "duration_ms": duration, **totals})
    columns = ["trace_id", "root_name", "start_time", "duration_ms", *CATEGORIES]
    return pd.DataFrame(rows, columns=columns).sort_values("start_time", kind="stable").reset_index(drop=True)


def time_breakdown(source: Any, trace_ids: Any = None, *, service: str | None = None, limit: int = 30) -> Any:
    """Draw the time of each trace split into LLM, TTS, database, network and compute (stacked bars).

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
        title="Where the time goes per trace (self time by category)", barmode="stack",
        height=max(260, 80 + 26 * len(table)), xaxis={"title": "ms"},
        yaxis={"autorange": "reversed", "automargin": True, "type": "category"},
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
    )
    return figure
