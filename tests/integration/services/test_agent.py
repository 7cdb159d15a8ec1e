"""The reference agent service over real WebSocket and HTTP traffic, with PostgreSQL and OTLP export."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from websockets.sync.client import connect

from homunculy_nb.services.agent.schemas import AgentConfiguration, system_prompt
from homunculy_nb.services.llm.generator import count_prompt_tokens

pytestmark = pytest.mark.integration

TIMEOUT = 30


def ws_url(services: dict[str, Any]) -> str:
    return services["agent"].url.replace("http://", "ws://") + "/api/v1/ws/chat"


def receive(ws: Any) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=TIMEOUT))


def receive_turn(ws: Any) -> list[dict[str, Any]]:
    """Read frames until `complete`."""
    frames = []
    while True:
        frames.append(receive(ws))
        if frames[-1]["type"] == "complete":
            return frames


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [frame for frame in frames if frame["type"] == kind]


def chat_request(user_id: str, message: str, **fields: Any) -> str:
    return json.dumps({"type": "chat_request", "user_id": user_id, "message": message, **fields})


def test_health_fields(services):
    for path in ("/", "/health"):
        body = httpx.get(services["agent"].url + path, timeout=10).json()

        assert body["status"] == "healthy"
        assert body["service"]
        assert body["version"]


def test_turn_streams_text_audio_metadata(services):
    user = f"user-{uuid.uuid4().hex[:8]}"
    with connect(ws_url(services)) as ws:
        hello = receive(ws)
        ws.send(chat_request(user, "How do I care for orchids?"))
        frames = receive_turn(ws)

    assert hello["type"] == "connection_status"
    assert hello["status"] == "connected"

    text = of_type(frames, "text_chunk")
    indexes = [frame["chunk_index"] for frame in text]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    assert text[-1]["is_final"] is True
    assert not any(frame["is_final"] for frame in text[:-1])

    audio = of_type(frames, "audio_chunk")
    assert len(audio) >= 2
    assert [frame["chunk_index"] for frame in audio] == list(range(audio[0]["chunk_index"],
                                                                    audio[0]["chunk_index"] + len(audio)))
    first_audio = base64.b64decode(audio[0]["data"])
    assert len(first_audio) == audio[0]["size_bytes"]
    # An MPEG audio frame header starts with 11 set bits.
    assert first_audio[0] == 0xFF
    assert first_audio[1] & 0xE0 == 0xE0
    assert audio[-1]["is_final"] is True
    assert audio[-1]["data"] == ""

    metadata = of_type(frames, "metadata")[0]
    complete = frames[-1]
    assert complete["message"] == "".join(frame["chunk"] for frame in text)
    assert "orchids" in complete["message"]
    assert metadata["total_text_chunks"] == len([frame for frame in text if frame["chunk"]])
    assert metadata["total_audio_chunks"] == len(audio)
    assert metadata["model_used"] == "gpt-4o-mini"
    assert metadata["tokens_used"] > metadata["total_text_chunks"]
    assert set(metadata) >= {"execution_time_ms", "tools_called", "thread_id", "voice_id"}
    assert complete["metadata"]["thread_id"] == metadata["thread_id"]


def test_turn_without_audio(services):
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(chat_request("no-audio", "Tell me about tea.", stream_audio=False))
        frames = receive_turn(ws)

    assert of_type(frames, "audio_chunk") == []
    assert of_type(frames, "metadata")[0]["total_audio_chunks"] == 0


def test_new_request_interrupts(services):
    user = f"user-{uuid.uuid4().hex[:8]}"
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(chat_request(user, "Talk about sourdough."))
        before = [receive(ws) for _ in range(3)]
        ws.send(chat_request(user, "Talk about cheesecake."))
        frames = receive_turn(ws)

    types = [frame["type"] for frame in frames]
    interrupted = frames[types.index("interrupted")]
    assert interrupted["reason"] == "new_message"
    assert interrupted["interrupted_at_text_chunk"] >= len(of_type(before, "text_chunk"))
    assert "interrupted_at_audio_chunk" in interrupted
    assert types.count("complete") == 1
    after = frames[types.index("interrupted") + 1:]
    assert "cheesecake" in frames[-1]["message"]
    assert of_type(after, "text_chunk")[0]["chunk_index"] == 1
    assert "sourdough" not in frames[-1]["message"]


@pytest.mark.parametrize("frame, code", [
    ("{not json", "INVALID_JSON"),
    (json.dumps({"user_id": "x"}), "MISSING_TYPE"),
    (json.dumps({"type": "dance"}), "INVALID_MESSAGE_TYPE"),
    (json.dumps({"type": "chat_request", "user_id": "x"}), "INVALID_REQUEST"),
    (json.dumps({"type": "chat_request", "user_id": "x", "message": "hi",
                 "configuration": {"temperature": 3}}), "INVALID_REQUEST"),
])
def test_error_codes_keep_connection(services, frame, code):
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(frame)
        error = receive(ws)
        ws.send(json.dumps({"type": "ping"}))
        pong = receive(ws)

    assert error["type"] == "error"
    assert error["code"] == code
    assert error["message"]
    assert "timestamp" in error
    assert "details" in error
    assert pong["type"] == "pong"


@pytest.mark.parametrize("fields, where", [
    ({"user_id": "u" * 201}, "user_id"),
    ({"message": "hello \x00 there"}, "message"),
    ({"context": {"notes": ["ok", "bad \x00"]}}, "context.notes[1]"),
    ({"configuration": {"personality": {"mood": "m" * 51}}}, "configuration.personality.mood"),
    ({"configuration": {"model_name": "m" * 101}}, "configuration.model_name"),
])
def test_unstorable_request_invalid(services, fields, where):
    frame = {"type": "chat_request", "user_id": "unstorable", "message": "hi", "stream_audio": False, **fields}
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(json.dumps(frame))
        error = receive(ws)
        ws.send(json.dumps({"type": "ping"}))
        pong = receive(ws)
    execute = httpx.post(services["agent"].url + "/api/v1/agents/execute",
                         json={key: value for key, value in frame.items() if key != "type"}, timeout=TIMEOUT)

    assert error["type"] == "error"
    assert error["code"] == "INVALID_REQUEST"
    assert where in json.dumps(error["details"])
    assert pong["type"] == "pong"
    assert execute.status_code == 422


def test_failed_turn_ends_with_error(services):
    # A constraint the changelog does not have makes storing this one message fail inside the turn.
    marker = f"reject-{uuid.uuid4().hex[:8]}"
    constraint = f"qa_{marker.replace('-', '_')}"
    with psycopg.connect(services["agent_uri"], autocommit=True) as conn:
        conn.execute(f"ALTER TABLE messages ADD CONSTRAINT {constraint} CHECK (content NOT LIKE '%{marker}%')")
    try:
        with connect(ws_url(services)) as ws:
            receive(ws)
            ws.send(chat_request("failing-turn", f"please store {marker}", stream_audio=False))
            error = receive(ws)
            ws.send(chat_request("failing-turn", "and now a normal question", stream_audio=False))
            frames = receive_turn(ws)
    finally:
        with psycopg.connect(services["agent_uri"], autocommit=True) as conn:
            conn.execute(f"ALTER TABLE messages DROP CONSTRAINT {constraint}")

    assert error["type"] == "error"
    assert error["code"] == "INTERNAL_ERROR"
    assert "CheckViolation" in error["details"]["error"]
    assert frames[-1]["message"]


def test_health_probes_not_logged(services):
    for _ in range(3):
        httpx.get(services["agent"].url + "/health", timeout=TIMEOUT)
    httpx.get(services["agent"].url + "/", timeout=TIMEOUT)
    missing = httpx.get(services["agent"].url + "/health?probe=1", timeout=TIMEOUT)
    lines = [json.loads(line) for line in services["agent"].log().splitlines() if line.startswith("{")]
    access = [line["message"] for line in lines if line["logger"] == "uvicorn.access"]

    assert missing.status_code == 200
    assert not [message for message in access if "GET /health" in message]
    assert [message for message in access if '"GET / HTTP/1.1" 200' in message]


def test_execute_matches_schema(services):
    body = {"user_id": "exec-user", "message": "Any tips for running?", "include_audio": True,
            "configuration": {"model_name": "gpt-4o", "temperature": 0.2, "max_tokens": 12,
                              "personality": {"name": "Coach", "description": "a running coach",
                                              "traits": {"energy": "high"}, "mood": "upbeat"}}}
    response = httpx.post(services["agent"].url + "/api/v1/agents/execute", json=body, timeout=TIMEOUT)

    assert response.status_code == 200
    reply = response.json()
    assert set(reply) == {"message", "confidence", "reasoning", "audio", "metadata"}
    assert reply["message"]
    assert 0 <= reply["confidence"] <= 1
    audio = reply["audio"]
    assert audio["format"] == "mp3"
    assert audio["encoding"] == "base64"
    assert len(base64.b64decode(audio["data"])) == audio["size_bytes"]
    assert audio["duration_ms"] > 0
    assert audio["generated"] is True
    assert set(audio) == {"data", "format", "encoding", "size_bytes", "voice_id", "duration_ms", "generated"}
    metadata = reply["metadata"]
    assert set(metadata) == {"model_used", "tokens_used", "execution_time_ms", "tools_called", "thread_id",
                             "storage_type"}
    assert metadata["model_used"] == "gpt-4o"
    assert metadata["storage_type"] == "postgres"
    # The stand-in cuts the reply at max_tokens, so the prompt's tokens plus 12 are the total.
    configuration = AgentConfiguration.model_validate(body["configuration"])
    prompt = [{"role": "system", "content": system_prompt(configuration)}, {"role": "user", "content": body["message"]}]
    assert metadata["tokens_used"] == count_prompt_tokens(prompt) + 12


def test_execute_rejects_bad_body(services):
    response = httpx.post(services["agent"].url + "/api/v1/agents/execute", json={"user_id": "u"}, timeout=10)

    assert response.status_code == 422


def test_later_turns_send_history(services):
    user = f"user-{uuid.uuid4().hex[:8]}"
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(chat_request(user, "What is a good first houseplant?", stream_audio=False))
        first = receive_turn(ws)[-1]
        ws.send(chat_request(user, "And how often should I water it?", stream_audio=False))
        second = receive_turn(ws)

    with psycopg.connect(services["agent_uri"]) as conn:
        rows = conn.execute(
            "SELECT m.role, m.content, m.model FROM messages m JOIN sessions s ON s.id = m.session_id "
            "WHERE s.user_id = %s ORDER BY m.id", (user,)
        ).fetchall()
    assert [row[0] for row in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[1][1] == first["message"]
    assert rows[1][2] == "gpt-4o-mini"

    # The stand-in's usage counts the prompt it got: the system prompt plus the whole history.
    metadata = of_type(second, "metadata")[0]
    prompt = [{"role": "system", "content": system_prompt(AgentConfiguration())},
              {"role": "user", "content": rows[0][1]}, {"role": "assistant", "content": rows[1][1]},
              {"role": "user", "content": rows[2][1]}]
    assert metadata["tokens_used"] == count_prompt_tokens(prompt) + metadata["total_text_chunks"]
    assert metadata["thread_id"] == first["metadata"]["thread_id"]


def test_turn_traced_with_client_context(services, otlp):
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(chat_request("traced", "How do owls see at night?", context={"traceparent": traceparent}))
        receive_turn(ws)

    def complete(spans):
        names = {(span["service"], span["name"]) for span in spans if span["trace_id"] == trace_id}
        return {("homunculy-app", "chat_request"), ("homunculy-app", "chat gpt-4o-mini"),
                ("homunculy-app", "tts.synthesize")} <= names and any(s == "llm" for s, _ in names)

    spans = [span for span in otlp.wait_for(complete) if span["trace_id"] == trace_id]
    by_name = {span["name"]: span for span in spans if span["service"] == "homunculy-app"}
    assert "chat_request" in by_name, spans
    llm_span = by_name["chat gpt-4o-mini"]
    assert llm_span["attributes"]["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm_span["attributes"]["gen_ai.system"] == "openai"
    assert llm_span["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert llm_span["attributes"]["gen_ai.usage.input_tokens"] > 0
    assert any(span["service"] == "llm" for span in spans)
    assert any(span["attributes"].get("db.system") == "postgresql" or
               span["attributes"].get("db.system.name") == "postgresql" for span in spans)

    log_lines = [json.loads(line) for line in services["agent"].log().splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == trace_id for line in log_lines)


def test_time_to_first_chunk_metric(services, otlp):
    with connect(ws_url(services)) as ws:
        receive(ws)
        ws.send(chat_request("metric-user", "Hello there, what is new?", stream_audio=False))
        receive_turn(ws)

    def exported():
        return any(row["name"] == "homunculy.chat.time_to_first_chunk" for row in list(otlp.metrics))

    otlp.wait_for(lambda spans: exported())
    assert exported()


def test_turn_joins_handshake_trace(services, otlp):
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    with connect(ws_url(services), additional_headers=headers) as ws:
        receive(ws)
        ws.send(chat_request("handshake", "Why is the sky blue?", stream_audio=False))
        receive_turn(ws)

    spans = otlp.wait_for(lambda spans: any(s["trace_id"] == trace_id and s["name"] == "chat_request" for s in spans))
    assert any(span["trace_id"] == trace_id and span["name"] == "chat_request" for span in spans)
