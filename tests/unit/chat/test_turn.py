"""Turn: building a turn from decoded frames, without a network."""

from __future__ import annotations

import base64
import json

from homunculy_nb.chat_turn import EMPTY_RESPONSE, Turn, decode_frame


def feed(turn: Turn, *frames: dict | str | bytes) -> list[bool]:
    ends = []
    for elapsed, frame in enumerate(frames):
        raw = json.dumps(frame) if isinstance(frame, dict) else frame
        ends.append(turn.apply(decode_frame(raw, float(elapsed))))
    return ends


def text(chunk: str, index: int, final: bool = False) -> dict:
    return {"type": "text_chunk", "chunk": chunk, "chunk_index": index, "is_final": final}


def audio(data: bytes, index: int, final: bool = False, size: int | None = None) -> dict:
    return {"type": "audio_chunk", "data": base64.b64encode(data).decode(), "chunk_index": index,
            "is_final": final, "size_bytes": len(data) if size is None else size}


COMPLETE = {"type": "complete", "message": "Stream completed successfully", "metadata": {"thread_id": "t"}}


def test_text_joins_chunks_from_index_one():
    turn = Turn("hi", "u")

    ends = feed(turn, text("", 1), text("Hello", 2), text(" there", 3), text("", 4, final=True), COMPLETE)

    assert turn.text == "Hello there"
    assert turn.chunk_indexes == [1, 2, 3, 4]
    assert turn.problems == []
    assert ends == [False, False, False, False, True]
    assert turn.completed


def test_first_chunk_time_skips_empty_chunks():
    turn = Turn("hi", "u")

    feed(turn, text("", 1), text("Hello", 2), COMPLETE)

    assert turn.time_to_first_chunk_ms == 1.0
    assert turn.duration_ms == 2.0
    assert turn.chunk_gaps_ms == [1.0]


def test_index_gap_is_a_problem():
    turn = Turn("hi", "u")

    feed(turn, text("a", 1), text("b", 3), COMPLETE)

    assert turn.problems == ["text chunk index 3 follows 1"]


def test_audio_joined_in_index_order():
    turn = Turn("hi", "u")

    feed(turn, text("x", 1), audio(b"second", 2), audio(b"first-", 1), audio(b"", 3, final=True), COMPLETE)

    assert turn.audio == b"first-second"
    assert turn.time_to_first_audio_ms == 1.0


def test_audio_size_mismatch_is_a_problem():
    turn = Turn("hi", "u")

    feed(turn, audio(b"abc", 1, size=5))

    assert turn.problems == ["audio chunk 1 has 3 bytes, `size_bytes` says 5"]


def test_invalid_base64_is_a_problem():
    turn = Turn("hi", "u")

    feed(turn, {"type": "audio_chunk", "data": "not base64!", "chunk_index": 1, "is_final": False})

    assert turn.audio == b""
    assert turn.problems[0].startswith("audio chunk 1 is not valid base64")


def test_complete_without_text_is_flagged():
    turn = Turn("hi", "u")

    feed(turn, {"type": "metadata", "total_text_chunks": 0}, COMPLETE)

    assert turn.completed
    assert turn.error_code == EMPTY_RESPONSE
    assert turn.problems == ["the turn completed with no text"]
    assert turn.metadata == {"total_text_chunks": 0, "thread_id": "t"}


def test_interrupted_keeps_reported_indexes():
    turn = Turn("hi", "u")

    ends = feed(turn, text("a", 1), {"type": "interrupted", "reason": "new_message",
                                     "interrupted_at_text_chunk": 1, "interrupted_at_audio_chunk": 0})

    assert ends[-1] is True
    assert turn.interrupted
    assert turn.interruption["interrupted_at_text_chunk"] == 1
    assert turn.interruption["interrupted_at_audio_chunk"] == 0
    assert turn.error_code is None


def test_error_frame_ends_turn():
    turn = Turn("hi", "u")

    ends = feed(turn, {"type": "error", "code": "INVALID_REQUEST", "message": "bad", "details": {"f": 1}})

    assert ends == [True]
    assert turn.error.code == "INVALID_REQUEST"
    assert turn.error.details == {"f": 1}
    assert turn.error_code == "INVALID_REQUEST"


def test_unusable_frames_are_kept_raw():
    cases = {
        "{oops": "invalid JSON",
        "[1, 2]": "JSON list instead of an object",
        '{"type": "mystery"}': "unknown frame type 'mystery'",
        '{"no_type": 1}': "unknown frame type None",
        b"\x00\x01": "binary frame of 2 bytes",
    }
    for raw, problem in cases.items():
        event = decode_frame(raw, 0.0)

        assert event.problem.startswith(problem), raw
        assert event.raw == raw


def test_unusable_frame_does_not_end_turn():
    turn = Turn("hi", "u")

    ends = feed(turn, "{oops", text("a", 1), COMPLETE)

    assert ends == [False, False, True]
    assert turn.text == "a"
    assert turn.events[0].raw == "{oops"
    assert len(turn.problems) == 1


def test_record_is_json_ready():
    turn = Turn("hi", "u")
    feed(turn, text("a", 1), audio(b"xyz", 1), COMPLETE)

    record = json.loads(json.dumps(turn.to_record()))

    assert record["text"] == "a"
    assert record["audio_bytes"] == 3
    assert record["error_code"] is None
