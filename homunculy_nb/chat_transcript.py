"""Chat transcripts: a session's turns as a DataFrame, a JSON file and a Markdown file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from homunculy_nb.chat_turn import Turn

if TYPE_CHECKING:
    import pandas as pd

TRANSCRIPT_COLUMNS = [
    "turn", "role", "text", "time", "time_to_first_chunk_ms", "duration_ms", "interrupted", "error_code",
    "trace_id",
]


def transcript_frame(turns: Sequence[Turn]) -> pd.DataFrame:
    """Return one row per message: the user's request at its send time, the reply at its last frame."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    for index, turn in enumerate(turn for turn in turns if turn.message is not None):
        common = {"turn": index, "trace_id": turn.trace_id}
        rows.append(common | {"role": "user", "text": turn.message, "time": turn.started_at,
                              "time_to_first_chunk_ms": None, "duration_ms": None, "interrupted": None,
                              "error_code": None})
        rows.append(common | {"role": "assistant", "text": turn.text, "time": turn.finished_at,
                              "time_to_first_chunk_ms": turn.time_to_first_chunk_ms,
                              "duration_ms": turn.duration_ms, "interrupted": turn.interrupted,
                              "error_code": turn.error_code})

    frame = pd.DataFrame(rows, columns=TRANSCRIPT_COLUMNS)
    return frame.astype({
        "turn": "Int64", "role": "string", "text": "string", "time": "datetime64[ns, UTC]",
        "time_to_first_chunk_ms": "Float64", "duration_ms": "Float64", "interrupted": "boolean",
        "error_code": "string", "trace_id": "string",
    })


def write_transcript(turns: Sequence[Turn], path: str | Path, url: str | None = None,
                     user_id: str | None = None) -> list[Path]:
    """Write `turns` as `<path>.json` and `<path>.md` (a `.json` or `.md` suffix on `path` is replaced).

    When `path` is an existing directory the files are `transcript.json` and `transcript.md` inside it.
    Returns the two paths. Audio is recorded as byte counts only.
    """
    base = Path(path)
    if base.is_dir():
        base = base / "transcript"
    if base.suffix in (".json", ".md"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = base.with_suffix(".json"), base.with_suffix(".md")

    document = {"url": url, "user_id": user_id, "turns": [turn.to_record() for turn in turns]}
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    markdown_path.write_text(_markdown(turns, url, user_id), encoding="utf-8")
    return [json_path, markdown_path]


def _markdown(turns: Sequence[Turn], url: str | None, user_id: str | None) -> str:
    lines = ["# Chat transcript", ""]
    if url:
        lines.append(f"- Endpoint: `{url}`")
    if user_id:
        lines.append(f"- User: `{user_id}`")
    lines.append("")

    # Raw frames are left out, so the numbers match the `turn` column of `transcript_frame` (plus one).
    for index, turn in enumerate((turn for turn in turns if turn.message is not None), start=1):
        lines += [f"## Turn {index}", "", f"**User** ({turn.started_at:%Y-%m-%d %H:%M:%S} UTC):", "",
                  _quote(turn.message), "", "**Assistant**:", "", _quote(turn.text or "(no text)"), ""]
        lines.append(f"- first chunk: {_ms(turn.time_to_first_chunk_ms)}, first audio: "
                     f"{_ms(turn.time_to_first_audio_ms)}, duration: {_ms(turn.duration_ms)}")
        lines.append(f"- {len(turn.chunks)} text chunks, {len(turn.audio_chunks)} audio chunks, "
                     f"{sum(len(chunk.data) for chunk in turn.audio_chunks)} audio bytes")
        if turn.interrupted:
            lines.append(f"- interrupted: {json.dumps(turn.interruption, default=str)}")
        if turn.error_code:
            message = turn.error.message if turn.error else ""
            lines.append(f"- error: `{turn.error_code}` {message}".rstrip())
        for problem in turn.problems:
            lines.append(f"- problem: {problem}")
        if turn.trace_id:
            lines.append(f"- trace: `{turn.trace_id}`")
        lines.append("")
    return "\n".join(lines)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines() or [""])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"
