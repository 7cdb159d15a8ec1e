"""The service map: services as nodes, calls between them as edges with count, error rate and p95."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from .._common import (
    empty_figure,
    error_mask,
    format_ms,
    import_plotly,
    require_methods,
    service_color,
)

EDGE_COLUMNS = ["source", "target", "calls", "errors", "error_rate", "p50_ms", "p95_ms", "kind"]
NODE_COLUMNS = ["service", "kind", "spans", "errors", "level"]

# OTLP SpanKind: 3 is CLIENT. Collectors store it as a name or as the number.
_CLIENT_KINDS = {"CLIENT", "SPAN_KIND_CLIENT", "3"}


def call_graph(spans: pd.DataFrame, *, databases: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (nodes, edges) of the calls in `spans`.

    A call is a span whose parent span belongs to another service: the edge runs from the parent's
    service to the child's, and its latency is the child span's duration. With `databases`, a CLIENT
    span with a `db.system` attribute is also a call, to a node named after the database system and
    `db.name` (or `db.namespace`). Nodes carry a `level`: the length of the longest call chain leading
    to them, used to lay the map out left to right.
    """
    if spans.empty:
        return pd.DataFrame(columns=NODE_COLUMNS), pd.DataFrame(columns=EDGE_COLUMNS)

    spans = spans.reset_index(drop=True)
    errors = error_mask(spans["status_code"])
    parents = spans[["trace_id", "span_id", "service_name"]].rename(
        columns={"span_id": "parent_span_id", "service_name": "source"})
    calls = spans.assign(error=errors).merge(parents, on=["trace_id", "parent_span_id"], how="inner")
    calls = calls[calls["source"] != calls["service_name"]]
    calls = calls.assign(target=calls["service_name"], kind="service")[
        ["source", "target", "duration_ms", "error", "kind"]]

    if databases:
        database_calls = _database_calls(spans, errors)
        calls = pd.concat([calls, database_calls], ignore_index=True) if not database_calls.empty else calls

    edges = _aggregate_edges(calls)
    nodes = _nodes(spans, errors, edges)
    return nodes, edges


def _database_calls(spans: pd.DataFrame, errors: np.ndarray) -> pd.DataFrame:
    rows = []
    for index, (kind, attributes) in enumerate(zip(spans["kind"], spans["attributes"])):
        if str(kind).upper() not in _CLIENT_KINDS or not isinstance(attributes, dict):
            continue
        system = attributes.get("db.system") or attributes.get("db.system.name")
        if not system:
            continue
        database = attributes.get("db.name") or attributes.get("db.namespace")
        target = f"{system} {database}" if database else str(system)
        rows.append((spans.at[index, "service_name"], target, spans.at[index, "duration_ms"],
                     bool(errors[index]), "database"))
    return pd.DataFrame(rows, columns=["source", "target", "duration_ms", "error", "kind"])


def _aggregate_edges(calls: pd.DataFrame) -> pd.DataFrame:
    if calls.empty:
        return pd.DataFrame(columns=EDGE_COLUMNS)

    grouped = calls.groupby(["source", "target", "kind"], sort=True)
    edges = grouped.agg(calls=("duration_ms", "size"), errors=("error", "sum"),
                        p50_ms=("duration_ms", lambda d: float(np.percentile(d.astype(float), 50))),
                        p95_ms=("duration_ms", lambda d: float(np.percentile(d.astype(float), 95))))
    edges = edges.reset_index()
    edges["errors"] = edges["errors"].astype(int)
    edges["error_rate"] = edges["errors"] / edges["calls"]
    return edges[EDGE_COLUMNS]


def _nodes(spans: pd.DataFrame, errors: np.ndarray, edges: pd.DataFrame) -> pd.DataFrame:
    per_service = pd.DataFrame({"service": spans["service_name"], "error": errors}).groupby(
        "service", sort=True).agg(spans=("error", "size"), errors=("error", "sum")).reset_index()
    per_service["kind"] = "service"
    databases = edges[edges["kind"] == "database"]
    database_nodes = databases.groupby("target", sort=True).agg(
        spans=("calls", "sum"), errors=("errors", "sum")).reset_index().rename(columns={"target": "service"})
    database_nodes["kind"] = "database"

    nodes = pd.concat([per_service, database_nodes], ignore_index=True)
    nodes["errors"] = nodes["errors"].astype(int)
    levels = _levels(list(nodes["service"]), list(zip(edges["source"], edges["target"])))
    nodes["level"] = [levels[name] for name in nodes["service"]]
    return nodes[NODE_COLUMNS]


def _levels(names: list[Any], edges: list[tuple[Any, Any]]) -> dict[Any, int]:
    # Longest path from a node with no callers; a cycle stops growing after len(names) rounds.
    level = {name: 0 for name in names}
    for _ in range(len(names)):
        changed = False
        for source, target in edges:
            if source != target and level[target] < level[source] + 1:
                level[target] = level[source] + 1
                changed = True
        if not changed:
            break
    return level


def service_map(source: Any, since: Any = None, *, databases: bool = True) -> Any:
    """Draw the services that sent spans since `since` and the calls between them.

    Edge labels read `calls · error rate · p95`; node size grows with the number of spans and a red
    ring marks a service with error spans. Databases appear as square nodes (see `call_graph`).
    """
    require_methods(source, "spans")
    go = import_plotly()

    spans = source.spans(since=since)
    nodes, edges = call_graph(spans, databases=databases)
    if nodes.empty:
        return empty_figure("No spans received yet.")

    positions = _positions(nodes)
    figure = go.Figure()
    _add_edges(go, figure, edges, positions)

    sizes = 24 + 16 * np.log10(1 + nodes["spans"].to_numpy(dtype=float))
    figure.add_trace(go.Scatter(
        name="services",
        x=[positions[name][0] for name in nodes["service"]],
        y=[positions[name][1] for name in nodes["service"]],
        mode="markers+text",
        text=[html.escape(str(name)) for name in nodes["service"]],
        textposition="bottom center",
        marker={
            "size": sizes,
            "color": [service_color(name) for name in nodes["service"]],
            "symbol": ["square" if kind == "database" else "circle" for kind in nodes["kind"]],
            "line": {"color": ["#D62728" if errors else "#FFFFFF" for errors in nodes["errors"]],
                     "width": 3},
        },
        customdata=np.stack([nodes["spans"].to_numpy(), nodes["errors"].to_numpy()], axis=-1),
        hovertemplate="<b>%{text}</b><br>%{customdata[0]} spans, %{customdata[1]} errors<extra></extra>",
        showlegend=False,
    ))

    levels = int(nodes["level"].max()) + 1
    figure.update_layout(
        title="Service map" + (f" since {since}" if since is not None else ""),
        xaxis={"visible": False, "range": [-0.5, levels - 0.5]},
        yaxis={"visible": False, "range": [-0.6, max(1, nodes.groupby("level").size().max()) - 0.4]},
        height=max(320, 120 * nodes.groupby("level").size().max()),
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        plot_bgcolor="white",
    )
    return figure


def _positions(nodes: pd.DataFrame) -> dict[Any, tuple[float, float]]:
    positions = {}
    for level, group in nodes.groupby("level", sort=True):
        count = len(group)
        height = nodes.groupby("level").size().max()
        for rank, name in enumerate(group["service"]):
            positions[name] = (float(level), (height - 1) / 2 + (count - 1) / 2 - rank)
    return positions


def _add_edges(go: Any, figure: Any, edges: pd.DataFrame, positions: dict[Any, tuple[float, float]]) -> None:
    if edges.empty:
        return

    max_calls = edges["calls"].max()
    label_x, label_y, labels, hovers = [], [], [], []
    for edge in edges.itertuples(index=False):
        (x0, y0), (x1, y1) = positions[edge.source], positions[edge.target]
        if edge.source == edge.target:
            continue
        figure.add_annotation(
            x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y",
            showarrow=True, arrowhead=2, arrowsize=1.2, standoff=18, startstandoff=18,
            arrowwidth=1 + 3 * edge.calls / max_calls,
            arrowcolor="#D62728" if edge.error_rate > 0 else "#888888",
        )
        label = edge_label(edge.calls, edge.error_rate, edge.p95_ms)
        label_x.append((x0 + x1) / 2)
        label_y.append((y0 + y1) / 2 + 0.08)
        labels.append(label)
        hovers.append(f"{html.escape(str(edge.source))} → {html.escape(str(edge.target))}<br>"
                      f"{edge.calls} calls, {edge.errors} errors<br>"
                      f"p50 {format_ms(edge.p50_ms)}, p95 {format_ms(edge.p95_ms)}")

    figure.add_trace(go.Scatter(
        name="calls", x=label_x, y=label_y, mode="text", text=labels, hovertext=hovers,
        hoverinfo="text", textfont={"size": 11}, showlegend=False,
    ))


def edge_label(calls: int, error_rate: float, p95_ms: float) -> str:
    """Format an edge label: `12 calls · 8% errors · p95 35.0 ms`."""
    noun = "call" if calls == 1 else "calls"
    return f"{calls} {noun} · {error_rate:.0%} errors · p95 {format_ms(p95_ms)}"
