"""ChatClient against the scripted agent server: real WebSocket traffic on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from homunculy_nb.chat import (
    ChatClient, ChatClosedError, ChatConnectionError, ChatError, ChatProtocolError, ChatRequestError,
    ChatServerError, ChatTimeoutError, ConnectionState,
)
from homunculy_nb.errors import ConfigurationError


def test_send_returns_streamed_reply(agent, server_module):
    with ChatClient(agent.url, user_id="ada") as chat:
        turn = chat.send("hello there")

    assert turn.text == "You said: hello there"
    assert turn.chunk_indexes == [1, 2, 3, 4, 5]
    assert turn.chunks[-1].text == ""
    assert turn.chunks[-1].is_final
    assert turn.audio == server_module.audio_for("hello there")
    assert turn.completed
    assert turn.problems == []
    assert turn.metadata["model_used"] == "test-model"
    assert agent.requests[0]["user_id"] == "ada"
    assert agent.requests[0]["configuration"]["personality"]["name"] == "Homunculy"


def test_timings_are_ordered(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.send("timing check")

    assert 0 <= turn.time_to_first_chunk_ms <= turn.duration_ms
    assert 0 <= turn.time_to_first_audio_ms <= turn.duration_ms
    assert all(gap >= 0 for gap in turn.chunk_gaps_ms)
    assert len(turn.chunk_gaps_ms) == len(turn.chunks) - 1


def test_no_audio_when_not_requested(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.send("quiet please", stream_audio=False)

    assert turn.audio_chunks == []
    assert turn.time_to_first_audio_ms is None
    assert agent.requests[0]["stream_audio"] is False


def test_malformed_frames_are_kept_and_reported(agent, caplog):
    with ChatClient(agent.url) as chat:
        turn = chat.send("!malformed frames")

    assert turn.completed
    assert turn.text == "You said: !malformed frames"
    assert [event.raw for event in turn.events[:2]] == ["{this is not json", "[1, 2, 3]"]
    assert turn.problems[0].startswith("invalid JSON")
    assert turn.problems[1] == "JSON list instead of an object"
    assert "Kept an unusable frame" in caplog.text


def test_unknown_type_is_kept_and_reported(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.send("!unknown type")

    assert turn.completed
    assert turn.events[0].type == "mystery"
    assert turn.events[0].data == {"type": "mystery", "value": 42, "timestamp": turn.events[0].data["timestamp"]}
    assert turn.problems == ["unknown frame type 'mystery'"]


def test_binary_frame_is_kept(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.send("!binary frame")

    assert turn.completed
    assert turn.events[0].raw == b"\x00\x01binary"
    assert turn.problems == ["binary frame of 8 bytes (the protocol sends JSON text)"]


def test_two_mib_audio_frame(agent, server_module):
    with ChatClient(agent.url) as chat:
        turn = chat.send("!audio2mib")

    assert len(turn.audio) == server_module.TWO_MIB
    assert turn.audio == server_module.audio_for("!audio2mib", server_module.TWO_MIB)
    assert turn.problems == []


def test_frame_over_max_size_closes_with_1009(agent):
    with ChatClient(agent.url, max_message_size=1024 * 1024) as chat:
        with pytest.raises(ChatClosedError) as caught:
            chat.send("!audio2mib")

    assert caught.value.code == 1009


def test_stalled_turn_times_out_with_partial_turn(agent):
    with ChatClient(agent.url, turn_timeout=0.5) as chat:
        with pytest.raises(ChatTimeoutError) as caught:
            chat.send("!stall here")

        assert caught.value.timeout == 0.5
        assert caught.value.turn.text == "You said: "
        assert "2 text chunks" in str(caught.value)

        # The next request interrupts the stalled turn, and its frames do not leak into the new turn.
        after = chat.send("after the stall")

    assert after.text == "You said: after the stall"
    assert after.chunk_indexes == [1, 2, 3, 4, 5, 6]
    assert caught.value.turn.interrupted
    assert caught.value.turn.interruption["interrupted_at_text_chunk"] == 2


def test_close_1011_reports_code_and_reason(agent):
    chat = ChatClient(agent.url).connect()
    try:
        with pytest.raises(ChatClosedError) as caught:
            chat.send("!close1011 now")

        assert caught.value.code == 1011
        assert caught.value.reason == "agent crashed"
        assert caught.value.turn.text == "You "
        assert chat.state is ConnectionState.CLOSED
        with pytest.raises(ChatClosedError, match="reconnect"):
            chat.send("still there?")

        chat.reconnect()
        assert chat.send("back again").text == "You said: back again"
    finally:
        chat.close()


def test_refused_connection_names_url_and_cause():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/api/v1/ws/chat"

    with pytest.raises(ChatConnectionError) as caught:
        ChatClient(url, open_timeout=5).connect()

    assert caught.value.url == url
    assert isinstance(caught.value.cause, ConnectionRefusedError)
    assert url in str(caught.value)


def test_missing_greeting_is_a_connection_error(make_agent):
    server = make_agent(greet=False)

    with pytest.raises(ChatConnectionError, match="connection_status"):
        ChatClient(server.url, open_timeout=0.5).connect()


@pytest.mark.parametrize(("frame", "code", "error_class"), [
    ("{not json", "INVALID_JSON", ChatProtocolError),
    ({"no_type": True}, "MISSING_TYPE", ChatProtocolError),
    ({"type": "dance"}, "INVALID_MESSAGE_TYPE", ChatProtocolError),
    ({"type": "chat_request", "user_id": "u", "message": ""}, "INVALID_REQUEST", ChatRequestError),
])
def test_error_frames_raise_typed_errors(agent, frame, code, error_class):
    with ChatClient(agent.url) as chat:
        with pytest.raises(error_class) as caught:
            chat.send_raw(frame)

        assert caught.value.code == code
        assert caught.value.turn.error.code == code
        assert chat.state is ConnectionState.OPEN
        assert chat.send("still usable").text == "You said: still usable"


def test_empty_message_raises_request_error(agent):
    with ChatClient(agent.url) as chat:
        with pytest.raises(ChatRequestError, match="INVALID_REQUEST"):
            chat.send("")

        assert chat.send("next").completed


def test_server_error_base_class_for_unknown_codes():
    assert issubclass(ChatRequestError, ChatServerError)
    assert issubclass(ChatProtocolError, ChatServerError)
    assert issubclass(ChatServerError, ChatError)


def test_interrupt_async_mid_stream(agent):
    async def main():
        arrived = threading.Event()

        def on_event(event):
            if event.type == "text_chunk" and event.data["chunk_index"] >= 3:
                arrived.set()

        async with ChatClient(agent.url) as chat:
            slow = asyncio.ensure_future(chat.send_async("!slow story", on_event=on_event))
            await asyncio.to_thread(arrived.wait, 30)
            new = await chat.interrupt_async("stop, please")
            old = await slow
        return old, new

    old, new = asyncio.run(main())

    assert old.interrupted
    assert not old.completed
    assert old.interruption["reason"] == "new_message"
    assert old.interruption["interrupted_at_text_chunk"] == old.chunk_indexes[-1]
    assert len(old.chunks) < 200
    assert new.text == "You said: stop, please"
    assert new.chunk_indexes[0] == 1


def test_interrupt_while_iterating_stream(agent):
    with ChatClient(agent.url) as chat:
        stream = chat.stream("!slow story")
        for event in stream:
            if event.type == "text_chunk" and event.data["chunk_index"] == 3:
                new = chat.interrupt("new topic")
                break
        rest = list(stream)

    assert stream.turn.interrupted
    assert rest[-1].type == "interrupted"
    assert new.text == "You said: new topic"


def test_interrupt_without_stream_is_a_send(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.interrupt("nothing to stop")

    assert turn.completed
    assert not turn.interrupted


def test_stream_yields_events_in_order(agent):
    with ChatClient(agent.url) as chat:
        stream = chat.stream("stream me")
        events = list(stream)

    types = [event.type for event in events]
    assert types[0] == "text_chunk"
    assert types[-2:] == ["metadata", "complete"]
    assert stream.turn.text == "You said: stream me"


def test_stream_raises_after_error_event(agent):
    with ChatClient(agent.url) as chat:
        events = []
        with pytest.raises(ChatRequestError):
            for event in chat.stream(""):
                events.append(event)

    assert [event.type for event in events] == ["error"]


def test_async_stream(agent):
    async def main():
        async with ChatClient(agent.url) as chat:
            stream = chat.stream_async("async stream")
            return [event.type async for event in stream], stream.turn

    types, turn = asyncio.run(main())

    assert types[-1] == "complete"
    assert turn.text == "You said: async stream"


def test_sync_api_inside_running_loop(agent):
    # A Jupyter kernel runs cells inside a running event loop; the sync API must not need its own.
    async def cell():
        with ChatClient(agent.url) as chat:
            return chat.send("from a notebook cell")

    turn = asyncio.run(cell())

    assert turn.text == "You said: from a notebook cell"


def test_async_api_from_caller_loop(agent):
    async def cell():
        async with ChatClient(agent.url) as chat:
            first = await chat.send_async("one")
            second = await chat.send_async("two")
        return first, second, chat.state

    first, second, state = asyncio.run(cell())

    assert first.text == "You said: one"
    assert second.text == "You said: two"
    assert state is ConnectionState.CLOSED


def test_first_send_connects(agent):
    chat = ChatClient(agent.url)
    try:
        turn = chat.send("lazy connect")
    finally:
        chat.close()

    assert turn.completed
    assert chat.server_status["status"] == "connected"


def test_ping_returns_round_trip(agent):
    with ChatClient(agent.url) as chat:
        rtt = chat.ping()

    assert rtt > 0


def test_keepalive_answered_while_caller_blocks(make_agent):
    # The server pings every 0.2 s and closes if no pong comes within 2 s. A cell that blocks its
    # thread for 3 s must not lose the connection, because the background loop sends the pongs.
    server = make_agent(ping_interval=0.2, ping_timeout=2.0)

    with ChatClient(server.url) as chat:
        time.sleep(3)
        turn = chat.send("still connected")

    assert turn.completed
    assert server.connections[0].latency > 0


def test_on_event_sees_every_frame(agent):
    seen = []
    with ChatClient(agent.url) as chat:
        turn = chat.send("callback", on_event=seen.append)

    assert seen == turn.events


def test_traceparent_in_handshake_and_context(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.send("!headers")

    handshake, context = turn.text.split(" ")
    assert handshake.split("-")[1] == chat.connection_trace_id
    assert context.split("-")[1] == turn.trace_id
    assert context.split("-")[2] == turn.span_id
    assert turn.trace_id != chat.connection_trace_id


def test_spans_exported_to_collector_endpoint(agent, trace_receiver, wait_until):
    collector = SimpleNamespace(endpoints={"grpc": trace_receiver.endpoint}, api_key="test-key")

    with ChatClient(agent.url, collector=collector) as chat:
        turns = [chat.send("first"), chat.send("second")]

    assert wait_until(lambda: {turn.trace_id for turn in turns} <= trace_receiver.trace_ids())
    assert chat.connection_trace_id in trace_receiver.trace_ids()
    names = {span["name"] for span in trace_receiver.spans}
    assert names == {"chat connect", "chat turn"}
    assert {span["service"] for span in trace_receiver.spans} == {"homunculy-nb-chat"}
    assert all(metadata.get("x-otlp-api-key") == "test-key" for metadata in trace_receiver.metadata)


def test_trace_ids_are_lowercase_hex(agent):
    with ChatClient(agent.url) as chat:
        turn = chat.send("ids")

    assert len(turn.trace_id) == 32
    assert turn.trace_id == turn.trace_id.lower()
    int(turn.trace_id, 16)


def test_transcript_frame(agent):
    with ChatClient(agent.url) as chat:
        chat.send("first question")
        chat.send("second question")
        frame = chat.transcript()

    assert list(frame["role"]) == ["user", "assistant", "user", "assistant"]
    assert list(frame["text"]) == ["first question", "You said: first question", "second question",
                                   "You said: second question"]
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]"
    assert frame["time"].is_monotonic_increasing
    assert frame["duration_ms"].isna().tolist() == [True, False, True, False]


def test_save_transcript_writes_json_and_markdown(agent, tmp_path):
    with ChatClient(agent.url, user_id="ada") as chat:
        chat.send("remember me")
        paths = chat.save_transcript(tmp_path / "session.json")

    assert [path.name for path in paths] == ["session.json", "session.md"]
    document = json.loads(paths[0].read_text())
    assert document["user_id"] == "ada"
    assert document["turns"][0]["text"] == "You said: remember me"
    assert document["turns"][0]["audio_bytes"] == 3000
    markdown = paths[1].read_text()
    assert "> remember me" in markdown
    assert "> You said: remember me" in markdown


def test_run_dir_keeps_each_turn(agent, tmp_path):
    with ChatClient(agent.url, run_dir=tmp_path) as chat:
        chat.send("one")
        chat.send("two")

    lines = (tmp_path / "chat" / "turns.jsonl").read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["one", "two"]
    assert json.loads(lines[0])["url"] == agent.url


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/x", "", None])
def test_non_websocket_url_rejected(url):
    with pytest.raises(ConfigurationError, match="ws://"):
        ChatClient(url)


def test_bad_timeout_rejected():
    with pytest.raises(ConfigurationError, match="turn_timeout"):
        ChatClient("ws://127.0.0.1:1/x", turn_timeout=0)


def test_close_fails_waiting_turn(agent):
    async def main():
        async with ChatClient(agent.url) as chat:
            stalled = asyncio.ensure_future(chat.send_async("!stall forever"))
            await asyncio.sleep(0.2)
            await chat.close_async()
            with pytest.raises(ChatClosedError):
                await stalled

    asyncio.run(main())


def test_server_connection_closed_after_close(agent, wait_until):
    with ChatClient(agent.url) as chat:
        chat.send("hi")
        assert agent.open_connections == 1

    assert wait_until(lambda: agent.open_connections == 0)


def test_concurrent_first_sends_share_connection(agent):
    async def main():
        chat = ChatClient(agent.url)
        try:
            return await asyncio.gather(*(chat.send_async(f"at once {index}") for index in range(3)))
        finally:
            await chat.close_async()

    turns = asyncio.run(main())

    assert agent.total_connections == 1
    assert sum(turn.completed for turn in turns) >= 1
    assert all(turn.finished for turn in turns)


def test_url_credentials_hidden():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chat = ChatClient(f"ws://ada:secret@127.0.0.1:{port}/api/v1/ws/chat", open_timeout=5)

    with pytest.raises(ChatConnectionError) as caught:
        chat.connect()

    assert "secret" not in repr(chat)
    assert "secret" not in str(caught.value)
    assert "secret" not in caught.value.url
    assert f"ws://REDACTED:REDACTED@127.0.0.1:{port}/api/v1/ws/chat" in str(caught.value)


def test_collector_without_grpc_rejected():
    collector = SimpleNamespace(endpoints={"http": "http://127.0.0.1:1"}, api_key=None)

    with pytest.raises(ConfigurationError, match="grpc_port"):
        ChatClient("ws://127.0.0.1:1/x", collector=collector)


def test_rejected_handshake_names_status(make_agent):
    server = make_agent(reject_status=404)

    with pytest.raises(ChatConnectionError) as caught:
        ChatClient(server.url).connect()

    assert "HTTP 404" in str(caught.value)
    assert "/api/v1/ws/chat" in str(caught.value)


def test_failing_callback_does_not_stop_turn(agent, caplog):
    def on_event(event):
        raise RuntimeError("display broke")

    with ChatClient(agent.url) as chat:
        turn = chat.send("callback fails", on_event=on_event)
        after = chat.send("next turn")

    assert turn.completed
    assert after.completed
    assert caplog.text.count("on_event callback raised") == 1


def test_timed_out_turn_joins_turns_when_it_ends(agent):
    with ChatClient(agent.url, turn_timeout=0.3) as chat:
        with pytest.raises(ChatTimeoutError):
            chat.send("!stall again")
        chat.send("unblock")

    assert [turn.message for turn in chat.turns] == ["!stall again", "unblock"]
    assert chat.turns[0].interrupted
