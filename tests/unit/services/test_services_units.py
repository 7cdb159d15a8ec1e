"""Pure parts of the reference services: text generation, sentence splitting, prompts, audio, quotas, logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import wave
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from homunculy_nb.services._database import conninfo_from_env
from homunculy_nb.services._observability import JsonFormatter
from homunculy_nb.services.agent.agent import SentenceSplitter
from homunculy_nb.services.agent.schemas import AgentConfiguration, system_prompt
from homunculy_nb.services.agent.settings import Settings
from homunculy_nb.services.agent.tts import ToneSynthesizer, encode_pcm
from homunculy_nb.services.llm.generator import count_prompt_tokens, generate_reply, tokenize
from homunculy_nb.services.management.quotas import TIERS, QuotaExceeded, cost_of, next_utc_midnight

CONVERSATION = [{"role": "user", "content": "How do I prune apple trees?"}]


def test_reply_same_for_same_conversation():
    assert generate_reply("m", CONVERSATION, None) == generate_reply("m", CONVERSATION, None)


def test_reply_differs_by_model():
    assert generate_reply("a", CONVERSATION, None).text != generate_reply("b", CONVERSATION, None).text


def test_reply_mentions_topic_and_ends_sentence():
    reply = generate_reply("m", CONVERSATION, None)

    assert "apple" in reply.text or "prune" in reply.text or "trees" in reply.text
    assert reply.text.endswith(".")
    assert reply.finish_reason == "stop"
    assert tokenize(reply.text) == [piece.strip() for piece in reply.pieces]


def test_reply_cut_at_max_tokens():
    reply = generate_reply("m", CONVERSATION, 3)

    assert len(reply.pieces) == 3
    assert reply.finish_reason == "length"


def test_prompt_tokens_count_every_message():
    one = count_prompt_tokens(CONVERSATION)
    two = count_prompt_tokens([*CONVERSATION, {"role": "assistant", "content": "Cut in winter."}])

    assert two - one == 4 + 4


def test_multipart_content_counts_text():
    parts = [{"role": "user", "content": [{"type": "text", "text": "How do I prune apple trees?"}]}]

    assert count_prompt_tokens(parts) == count_prompt_tokens(CONVERSATION)


def test_splitter_releases_whole_sentences():
    splitter = SentenceSplitter()
    released = []
    for piece in ["Good", " question", ".", " Start", " small", "!", " Then", " grow"]:
        released += splitter.feed(piece)

    assert released == ["Good question.", "Start small!"]
    assert splitter.flush() == ["Then grow"]
    assert splitter.flush() == []


def test_system_prompt_uses_personality():
    configuration = AgentConfiguration.model_validate({
        "system_prompt": "Be brief.",
        "personality": {"name": "Ada", "description": "a patient tutor", "traits": {"humor": "dry"}, "mood": "calm"},
    })

    prompt = system_prompt(configuration)

    assert prompt.startswith("Be brief.")
    assert "You are Ada, a patient tutor." in prompt
    assert "humor: dry" in prompt
    assert "calm" in prompt


def test_tone_length_follows_text():
    tone = ToneSynthesizer()
    short = asyncio.run(tone.synthesize("Hi.", "v"))
    long = asyncio.run(tone.synthesize("This sentence is a good deal longer than the first one.", "v"))

    assert short.format == "mp3"
    assert long.duration_ms > 3 * short.duration_ms
    assert len(long.data) > len(short.data)


def test_encode_pcm_without_lameenc_gives_wav(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lameenc", None)
    data, audio_format = encode_pcm(b"\x00\x00" * 1600, 16000)

    assert audio_format == "wav"
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getnframes() == 1600


def test_settings_accept_openai_base_url(monkeypatch):
    monkeypatch.delenv("LLM_OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/")

    assert Settings.from_env().llm_base_url == "http://127.0.0.1:9/v1"


def test_settings_reject_bad_temperature(monkeypatch):
    monkeypatch.setenv("LLM_DEFAULT_TEMPERATURE", "warm")

    with pytest.raises(ValueError, match="LLM_DEFAULT_TEMPERATURE"):
        Settings.from_env()


def test_conninfo_from_db_variables(monkeypatch):
    monkeypatch.delenv("DATABASE_URI", raising=False)
    for key, value in {"DB_HOST": "127.0.0.1", "DB_PORT": "5433", "DB_NAME": "homunculy", "DB_USER": "u",
                       "DB_PASSWORD": "p w", "DB_SSL_MODE": "disable"}.items():
        monkeypatch.setenv(key, value)

    conninfo = conninfo_from_env()

    assert "port=5433" in conninfo
    assert "dbname=homunculy" in conninfo
    assert "sslmode=disable" in conninfo
    assert "password='p w'" in conninfo


def test_conninfo_strips_driver(monkeypatch):
    monkeypatch.setenv("DATABASE_URI", "postgresql+asyncpg://u:p@127.0.0.1:5433/homunculy")

    assert conninfo_from_env() == "postgresql://u:p@127.0.0.1:5433/homunculy"


def test_tiers_grow_with_price():
    free, premium, enterprise = TIERS["free"], TIERS["premium"], TIERS["enterprise"]

    assert free.max_requests_per_minute < premium.max_requests_per_minute < enterprise.max_requests_per_minute
    assert free.max_tokens_per_day < premium.max_tokens_per_day < enterprise.max_tokens_per_day


def test_cost_of_known_and_unknown_model():
    assert cost_of("gpt-4o-mini", 1000) == Decimal("0.000400")
    assert cost_of("someone-elses-model", 500) == Decimal("0.001000")


def test_quota_body_names_limit_and_reset():
    now = datetime(2026, 1, 1, 23, 59, 30, tzinfo=timezone.utc)
    body = QuotaExceeded("requests_per_day", 100, 100, next_utc_midnight(now)).body(now)

    assert body["limit"] == "requests_per_day"
    assert body["resets_at"] == "2026-01-02T00:00:00+00:00"
    assert body["retry_after_seconds"] == 30
    assert "requests_per_day" in body["error"]


def test_json_log_line_carries_span_ids():
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    record = logging.LogRecord("svc", logging.INFO, __file__, 1, "turn %s done", ("t1",), None)
    record.user_id = "u1"

    with tracer.start_as_current_span("turn") as span:
        line = json.loads(JsonFormatter("homunculy-app").format(record))

    assert line["message"] == "turn t1 done"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert line["user_id"] == "u1"
    assert line["service"] == "homunculy-app"


@pytest.mark.parametrize("path, status, kept", [
    ("/health", 200, False),
    ("/api/v1/health?verbose=1", 200, False),
    ("/health", 503, True),
    ("/api/v1/chat", 200, True),
])
def test_health_probe_filter(path, status, kept):
    from homunculy_nb.services._observability import HealthProbeFilter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", path, "1.1", status), None)

    assert HealthProbeFilter().filter(record) is kept
