"""Saved telemetry runs: Parquet files per signal plus a JSON manifest, and `open_run` to query them.

Parquet has no type for the free-form values OTLP allows in attributes (nested dicts, lists of mixed
types, bytes), so dict and list columns are stored as JSON strings. Bytes are written as
`{"$bytes": "<base64>"}` and restored on load, so `open_run(path).spans()` equals the live frame.
"""

from __future__ import annotations

import base64
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.otlp import SIGNALS
from homunculy_nb.telemetry import OBJECT_COLUMNS, STATS_COLUMNS, TelemetryQueries, empty_frame

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "homunculy-nb-telemetry"
FORMAT_VERSION = 1
TUPLE_COLUMNS = {"spans": ("events", "links")}
"""Columns whose values are tuples in live frames; JSON turns them into lists, so loading restores them."""
_BYTES_TAG = "$bytes"
_FLOAT_TAG = "$float"


def _encode_special(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return {_BYTES_TAG: base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Cannot store a value of type {type(value).__name__} in a saved run: {value!r}")


def _prepare(value: Any) -> Any:
    """Tag non-finite floats, which strict JSON readers reject, before `json.dumps`."""
    if isinstance(value, float) and not math.isfinite(value):
        return {_FLOAT_TAG: repr(value)}
    if isinstance(value, dict):
        return {key: _prepare(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_prepare(item) for item in value]
    return value


def _decode_special(document: dict[str, Any]) -> Any:
    if len(document) == 1:
        if _BYTES_TAG in document:
            return base64.b64decode(document[_BYTES_TAG])
        if _FLOAT_TAG in document:
            return float(document[_FLOAT_TAG])
    return document


def _to_json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(_prepare(value), default=_encode_special, separators=(",", ":"), allow_nan=False)


def _from_json(text: Any) -> Any:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    return json.loads(text, object_hook=_decode_special)


def save_run(path: str | os.PathLike[str], frames: dict[str, pd.DataFrame], stats: pd.DataFrame) -> Path:
    """Write one Parquet file per signal and the manifest into directory `path`, creating it."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)

    signals = {}
    for signal in SIGNALS:
        frame = frames[signal].copy()
        for column in OBJECT_COLUMNS[signal]:
            frame[column] = pd.array([_to_json(value) for value in frame[column]], dtype="str")
        file_name = f"{signal}.parquet"
        frame.to_parquet(directory / file_name, index=False)
        signals[signal] = {"file": file_name, "rows": len(frame)}

    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "saved_at": datetime.now(timezone.utc).isoformat(),
        "signals": signals,
        "json_columns": {signal: OBJECT_COLUMNS[signal] for signal in SIGNALS},
        "stats": {signal: {k: int(v) for k, v in row.items()} for signal, row in stats.to_dict("index").items()},
    }
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


class Run(TelemetryQueries):
    """A saved run opened for querying: the query methods of a live collector, read from Parquet."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._frames: dict[str, pd.DataFrame] = {}

    def __repr__(self) -> str:
        rows = ", ".join(f"{s}={self.manifest['signals'].get(s, {}).get('rows', 0)}" for s in SIGNALS)
        return f"<Run {str(self.path)!r} {rows}>"

    def _frame(self, signal: str) -> pd.DataFrame:
        frame = self._frames.get(signal)
        if frame is None:
            frame = self._load(signal)
            self._frames[signal] = frame
        return frame

    def _load(self, signal: str) -> pd.DataFrame:
        entry = self.manifest["signals"].get(signal)
        if entry is None:
            return empty_frame(signal)
        frame = pd.read_parquet(self.path / entry["file"])
        for column in self.manifest.get("json_columns", {}).get(signal, []):
            if column in frame:
                values = [_from_json(text) for text in frame[column]]
                if column in TUPLE_COLUMNS.get(signal, ()):
                    values = [tuple(value) if isinstance(value, list) else value for value in values]
                frame[column] = np.fromiter(values, dtype=object, count=len(values))
        return frame

    def stats(self) -> pd.DataFrame:
        """Return the counts the collector had when the run was saved, one row per signal."""
        rows = self.manifest.get("stats", {})
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(STATS_COLUMNS)).astype(np.int64)
        frame.index.name = "signal"
        return frame


def open_run(path: str | os.PathLike[str]) -> Run:
    """Open a directory written by `Collector.save(path)` for querying, with no collector running."""
    directory = Path(path)
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ConfigurationError(
            f"{str(directory)!r} is not a saved run: it has no {MANIFEST_NAME}. Pass the directory given to "
            f"`collector.save(...)` or `homunculy-nb collector --save-to`."
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_NAME or manifest.get("version", 0) > FORMAT_VERSION:
        raise ConfigurationError(
            f"{str(manifest_path)!r} is not a homunculy-nb telemetry manifest of version {FORMAT_VERSION} or "
            f"older (format={manifest.get('format')!r}, version={manifest.get('version')!r}). Upgrade "
            f"homunculy-nb to read it."
        )
    return Run(directory, manifest)
