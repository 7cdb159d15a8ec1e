"""save_transcript paths and Markdown numbering."""

import json
from datetime import datetime, timezone

from homunculy_nb.chat_transcript import transcript_frame, write_transcript
from homunculy_nb.chat_turn import Turn


def _turn(message):
    turn = Turn(message=message, user_id="qa")
    turn.started_at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    return turn


def test_transcript_into_existing_directory(tmp_path):
    paths = write_transcript([_turn("hello")], tmp_path)

    assert paths == [tmp_path / "transcript.json", tmp_path / "transcript.md"]
    assert json.loads(paths[0].read_text())["turns"][0]["message"] == "hello"
    assert "> hello" in paths[1].read_text()
    assert sorted(path.name for path in tmp_path.parent.iterdir() if path.name.startswith(tmp_path.name)) == [
        tmp_path.name]


def test_markdown_numbers_skip_raw_frames(tmp_path):
    turns = [_turn("first"), _turn(None), _turn("second")]

    markdown = write_transcript(turns, tmp_path / "t")[1].read_text()
    frame = transcript_frame(turns)

    assert "## Turn 1" in markdown
    assert "## Turn 2" in markdown
    assert "## Turn 3" not in markdown
    assert markdown.index("## Turn 2") < markdown.index("> second")
    assert frame["turn"].max() == 1
