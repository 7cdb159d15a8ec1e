"""Chat turn timings: time to first chunk, time to first audio and duration per turn, and their spread."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .._common import PALETTE, empty_figure, format_ms, import_plotly

TIMINGS = (
    ("time_to_first_chunk_ms", "first text chunk"),
    ("time_to_first_audio_ms", "first audio chunk"),
    ("duration_ms", "turn duration"),
)


def turn_frame(turns: Any) -> pd.DataFrame:
    """Return `turns` as a DataFrame with the timing columns, from a frame or a list of `Turn` objects.

    A frame (such as the one `run_sessions` returns) must have at least one timing column; objects must
    have the timing attributes. Missing timings (no audio, say) become NaN.
    """
    if isinstance(turns, pd.DataFrame):
        frame = turns.copy()
    else:
        turns = list(turns)
        if turns and not any(hasattr(turns[0], column) for column, _ in TIMINGS):
            raise TypeError(f"Expected a DataFrame of turns or `Turn` objects, but got {type(turns[0]).__name__} "
                            f"without {', '.join(column for column, _ in TIMINGS)}.")
        frame = pd.DataFrame({
            column: [getattr(turn, column, None) for turn in turns] for column, _ in TIMINGS
        })
        frame["trace_id"] = [getattr(turn, "trace_id", None) for turn in turns]
        frame["started_at"] = [getattr(turn, "started_at", None) for turn in turns]

    present = [column for column, _ in TIMINGS if column in frame.columns]
    if not present and not frame.empty:
        raise ValueError(f"The turns frame has none of the timing columns "
                         f"{', '.join(column for column, _ in TIMINGS)}; got {list(frame.columns)}.")
    for column, _ in TIMINGS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float) \
            if column in frame.columns else np.nan
    if "started_at" in frame.columns and frame["started_at"].notna().all():
        frame = frame.sort_values("started_at", kind="stable")
    return frame.reset_index(drop=True)


def turn_timings(turns: Any) -> Any:
    """Draw each turn's timings in order (left) and their distribution with p50 and p95 (right)."""
    go = import_plotly()
    from plotly.subplots import make_subplots

    frame = turn_frame(turns)
    if frame.empty:
        return empty_figure("No turns yet.")

    figure = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.08,
                           subplot_titles=("per turn", "distribution"))
    numbers = np.arange(1, len(frame) + 1)
    for index, (column, label) in enumerate(TIMINGS):
        values = frame[column].to_numpy(dtype=float)
        if np.isnan(values).all():
            continue
        color = PALETTE[index]
        hover = frame["trace_id"].astype(str).to_numpy() if "trace_id" in frame.columns else None
        figure.add_trace(go.Scatter(
            name=label, legendgroup=column, x=numbers, y=values, mode="lines+markers",
            line={"color": color}, customdata=hover,
            hovertemplate=f"turn %{{x}}<br>{label}: %{{y:.1f}} ms"
                          + ("<br>trace %{customdata}" if hover is not None else "") + "<extra></extra>",
        ), row=1, col=1)

        finite = values[~np.isnan(values)]
        p50, p95 = np.percentile(finite, [50, 95])
        figure.add_trace(go.Box(
            name=label, legendgroup=column, y=finite, marker={"color": color}, boxpoints="all",
            jitter=0.4, pointpos=0, showlegend=False,
            hovertemplate=f"{label}<br>%{{y:.1f}} ms<extra></extra>",
        ), row=1, col=2)
        figure.add_annotation(x=label, y=float(p95), text=f"p50 {format_ms(p50)}<br>p95 {format_ms(p95)}",
                              showarrow=False, yshift=24, font={"size": 10}, row=1, col=2)

    figure.update_layout(title=f"Turn timings ({len(frame)} turns)", height=400,
                         margin={"l": 10, "r": 10, "t": 70, "b": 40})
    figure.update_xaxes(title_text="turn", row=1, col=1)
    figure.update_yaxes(title_text="ms", rangemode="tozero", row=1, col=1)
    figure.update_yaxes(title_text="ms", rangemode="tozero", row=1, col=2)
    return figure
