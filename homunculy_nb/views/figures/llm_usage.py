"""LLM token usage and time per trace and per model, from the `gen_ai.*` span attributes."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from .._common import PALETTE, empty_figure, import_plotly, require_methods, short_id

# OpenTelemetry GenAI semantic conventions, with the names older instrumentations used second.
INPUT_TOKENS = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
OUTPUT_TOKENS = ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
MODEL = ("gen_ai.response.model", "gen_ai.request.model")
CALL_COLUMNS = ["trace_id", "span_id", "service_name", "name", "model", "start_time", "duration_ms",
                "input_tokens", "output_tokens"]


def _first(attributes: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if attributes.get(key) is not None:
            return attributes[key]
    return None


def _is_llm_span(attributes: object) -> bool:
    return isinstance(attributes, dict) and any(str(key).startswith("gen_ai.") for key in attributes)


def llm_calls(spans: pd.DataFrame) -> pd.DataFrame:
    """Return one row per LLM call: the spans with `gen_ai.*` attributes, without double counting.

    When both the caller's span and a span below it carry `gen_ai.*` attributes (a client span and the
    LLM server's span, say), only the outermost one counts, so its tokens and time appear once.
    Missing token counts are 0; a missing model is "unknown".
    """
    if spans.empty:
        return pd.DataFrame(columns=CALL_COLUMNS)

    flagged = np.array([_is_llm_span(a) for a in spans["attributes"]], dtype=bool)
    llm_ids = set(zip(spans["trace_id"][flagged], spans["span_id"][flagged]))
    parent_of = dict(zip(zip(spans["trace_id"], spans["span_id"]), spans["parent_span_id"]))

    rows = []
    for span in spans[flagged].itertuples(index=False):
        if _has_llm_ancestor(span.trace_id, span.parent_span_id, llm_ids, parent_of):
            continue
        attributes = span.attributes
        rows.append((span.trace_id, span.span_id, span.service_name, span.name,
                     str(_first(attributes, MODEL) or "unknown"), span.start_time, float(span.duration_ms),
                     int(_first(attributes, INPUT_TOKENS) or 0), int(_first(attributes, OUTPUT_TOKENS) or 0)))
    return pd.DataFrame(rows, columns=CALL_COLUMNS)


def _has_llm_ancestor(trace_id: str, parent: object, llm_ids: set, parent_of: dict) -> bool:
    seen = set()
    while isinstance(parent, str) and parent and parent not in seen:
        if (trace_id, parent) in llm_ids:
            return True
        seen.add(parent)
        parent = parent_of.get((trace_id, parent))
    return False


def llm_usage(source: Any, *, since: Any = None, limit: int = 50) -> Any:
    """Draw input and output tokens and LLM time per trace (top, the `limit` latest) and per model (bottom)."""
    require_methods(source, "spans")
    go = import_plotly()
    from plotly.subplots import make_subplots

    calls = llm_calls(source.spans(since=since))
    if calls.empty:
        return empty_figure("No spans with gen_ai.* attributes yet.")

    per_trace = calls.groupby("trace_id", sort=False).agg(
        start_time=("start_time", "min"), input_tokens=("input_tokens", "sum"),
        output_tokens=("output_tokens", "sum"), llm_ms=("duration_ms", "sum"), calls=("span_id", "size"),
    ).sort_values("start_time").tail(limit).reset_index()
    per_model = calls.groupby("model", sort=True).agg(
        input_tokens=("input_tokens", "sum"), output_tokens=("output_tokens", "sum"),
        llm_ms=("duration_ms", "sum"), calls=("span_id", "size"),
    ).reset_index()

    figure = make_subplots(rows=2, cols=1, specs=[[{"secondary_y": True}], [{"secondary_y": True}]],
                           subplot_titles=("per trace", "per model"), vertical_spacing=0.18)
    trace_labels = [short_id(trace_id) for trace_id in per_trace["trace_id"]]
    model_labels = [html.escape(model) for model in per_model["model"]]
    for row, labels, table in ((1, trace_labels, per_trace), (2, model_labels, per_model)):
        for column, label, color in (("input_tokens", "input tokens", PALETTE[0]),
                                     ("output_tokens", "output tokens", PALETTE[1])):
            figure.add_trace(go.Bar(
                name=label, legendgroup=column, showlegend=row == 1, x=labels,
                y=table[column].to_numpy(dtype=float), marker={"color": color},
                customdata=table["calls"].to_numpy(),
                hovertemplate=f"%{{x}}<br>{label}: %{{y:.0f}}<br>%{{customdata}} calls<extra></extra>",
            ), row=row, col=1, secondary_y=False)
        figure.add_trace(go.Scatter(
            name="LLM time", legendgroup="llm_ms", showlegend=row == 1, x=labels,
            y=table["llm_ms"].to_numpy(dtype=float), mode="markers+lines",
            marker={"color": PALETTE[2], "size": 9}, line={"width": 1},
            hovertemplate="%{x}<br>LLM time: %{y:.1f} ms<extra></extra>",
        ), row=row, col=1, secondary_y=True)

    figure.update_layout(
        title=f"LLM usage: {int(calls['input_tokens'].sum())} input and {int(calls['output_tokens'].sum())} "
              f"output tokens in {len(calls)} calls",
        barmode="stack", height=640, margin={"l": 10, "r": 10, "t": 70, "b": 40},
    )
    figure.update_yaxes(title_text="tokens", secondary_y=False)
    figure.update_yaxes(title_text="LLM time (ms)", secondary_y=True, rangemode="tozero")
    figure.update_xaxes(title_text="trace", type="category", row=1, col=1)
    return figure
