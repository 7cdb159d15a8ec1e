"""ChatClient and run_sessions against the reference agent launched as a process, traces in a Collector."""

from __future__ import annotations

import base64
import threading
import time

import pytest

from homunculy_nb.chat import (
    ChatClient, ChatConnectionError, ChatProtocolError, ChatRequestError, ConnectionState, run_sessions, summarize,
)

pytestmark = pytest.mark.integration


def wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_turn_text_chunks_and_audio(chat_url):
    with ChatClient(chat_url) as chat:
        turn = chat.send("Tell me about octopuses.")

    raw_chunks = [event.data["chunk"] for event in turn.events if event.type == "text_chunk"]
    complete = next(event.data for event in turn.events if event.type == "complete")
    assert turn.completed
    assert turn.problems == []
    assert turn.text
    assert turn.text == "".join(raw_chunks)
    assert turn.text == complete["message"]
    first = turn.chunk_indexes[0]
    assert turn.chunk_indexes == list(range(first, first + len(turn.chunks)))
    assert turn.chunks[-1].text == ""
    assert turn.chunks[-1].is_final


def test_audio_equals_decoded_chunks(chat_url):
    with ChatClient(chat_url) as chat:
        turn = chat.send("Say something with sound.")

    frames = sorted((event.data for event in turn.events if event.type == "audio_chunk"),
                    key=lambda data: data["chunk_index"])
    decoded = b"".join(base64.b64decode(data["data"]) for data in frames)
    assert turn.audio
    assert turn.audio == decoded
    indexes = [chunk.index for chunk in turn.audio_chunks]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    assert turn.audio_chunks[-1].is_final


def test_timings_ordered(chat_url):
    with ChatClient(chat_url) as chat:
        turn = chat.send("How long does this take?")

    assert 0 < turn.time_to_first_chunk_ms <= turn.duration_ms
    assert 0 < turn.time_to_first_audio_ms <= turn.duration_ms
    assert all(gap >= 0 for gap in turn.chunk_gaps_ms)


def test_interrupt_mid_stream(chat_url):
    arrived = threading.Event()

    def on_event(event):
        if event.type == "text_chunk" and event.data["chunk"]:
            arrived.set()

    with ChatClient(chat_url) as chat:
        stream = chat.stream("Tell me a long story about the sea.")
        for event in stream:
            if event.type == "text_chunk" and len(stream.turn.chunks) >= 3:
                new = chat.interrupt("Stop. What is two plus two?")
                break
        rest = list(stream)
        old = stream.turn

    assert old.interrupted
    assert not old.completed
    assert rest[-1].type == "interrupted"
    assert old.interruption["interrupted_at_text_chunk"] == old.chunk_indexes[-1]
    assert new.completed
    assert new.text


@pytest.mark.parametrize(("frame", "code", "error_class"), [
    ("{not json", "INVALID_JSON", ChatProtocolError),
    ({"no_type": 1}, "MISSING_TYPE", ChatProtocolError),
    ({"type": "sing"}, "INVALID_MESSAGE_TYPE", ChatProtocolError),
    ({"type": "chat_request", "user_id": "u", "message": ""}, "INVALID_REQUEST", ChatRequestError),
])
def test_error_codes_typed_and_session_usable(chat_url, frame, code, error_class):
    with ChatClient(chat_url) as chat:
        with pytest.raises(error_class) as caught:
            chat.send_raw(frame)

        assert caught.value.code == code
        assert chat.state is ConnectionState.OPEN
        after = chat.send("Are you still there?")

    assert after.completed
    assert after.text


def test_ping(chat_url):
    with ChatClient(chat_url) as chat:
        assert chat.ping() > 0


def test_agent_spans_join_client_trace(chat_url, collector):
    with ChatClient(chat_url, collector=collector) as chat:
        turn = chat.send("Trace this turn.")

    def agent_span_under_turn():
        spans = collector.spans(service="homunculy-app", trace_id=turn.trace_id)
        return turn.span_id in set(spans["parent_span_id"].dropna())

    # The agent's `chat_request` span is a child of the client's turn span, so the whole turn is one trace.
    assert wait_until(agent_span_under_turn)
    spans = collector.spans(trace_id=turn.trace_id)
    assert set(spans["service_name"]) >= {"homunculy-nb-chat", "homunculy-app"}
    assert len(spans) > 2


def test_load_100_sessions_2_turns(chat_url, collector):
    frame = run_sessions(chat_url, sessions=100, turns=2, concurrency=100, collector=collector, progress=False,
                         timeout=600)

    assert len(frame) == 200
    assert frame["error_code"].isna().all(), frame["error_code"].value_counts()
    assert frame["text_chunks"].gt(0).all()
    assert summarize(frame).error_count == 0
    wanted = set(frame["trace_id"])
    assert len(wanted) == 200
    assert wait_until(lambda: wanted <= set(collector.spans()["trace_id"]))


def test_wrong_path_is_connection_error(chat_url):
    wrong = chat_url.replace("/api/v1/ws/chat", "/api/v1/ws/nothing")

    with pytest.raises(ChatConnectionError) as caught:
        ChatClient(wrong).connect()

    assert "HTTP 403" in str(caught.value)
    assert caught.value.url == wrong
