"""The local LLM stand-in over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest

pytestmark = pytest.mark.integration

CONVERSATION = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "How should I water my tomato plants?"}]


def stream_events(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def test_models_say_local_stand_in(services):
    body = httpx.get(f"{services['llm'].url}/v1/models", timeout=10).json()

    assert body["object"] == "list"
    assert "gpt-4o-mini" in [model["id"] for model in body["data"]]
    assert "stand-in" in body["notice"]
    assert "Local stand-in" in services["llm"].log()


def test_stream_matches_non_stream_reply(services):
    url = services["llm"].url
    plain = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": CONVERSATION},
                       timeout=30).json()

    events = stream_events(url, {"model": "gpt-4o-mini", "messages": CONVERSATION, "stream": True,
                                 "stream_options": {"include_usage": True}})

    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    assert text.endswith(".")
    assert "tomato" in text
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_stream_without_usage_option(services):
    events = stream_events(services["llm"].url, {"model": "gpt-4o", "messages": CONVERSATION, "stream": True})

    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_reply_deterministic_per_conversation(services):
    url = services["llm"].url
    other = [*CONVERSATION[:1], {"role": "user", "content": "What about roses in winter?"}]

    def reply(messages):
        body = {"model": "gpt-4o-mini", "messages": messages}
        return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).json()["choices"][0]["message"]["content"]

    assert reply(CONVERSATION) == reply(CONVERSATION)
    assert reply(CONVERSATION) != reply(other)


def test_max_tokens_cuts_reply(services):
    body = {"model": "gpt-4o-mini", "messages": CONVERSATION, "max_tokens": 5}
    response = httpx.post(f"{services['llm'].url}/v1/chat/completions", json=body, timeout=30).json()

    assert response["usage"]["completion_tokens"] == 5
    assert response["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("body, param", [
    ({"messages": CONVERSATION}, "model"),
    ({"model": "gpt-4o-mini", "messages": []}, "messages"),
    ({"model": "gpt-4o-mini", "messages": CONVERSATION, "max_tokens": 0}, "max_tokens"),
    ({"model": "gpt-4o-mini", "messages": CONVERSATION, "temperature": 2.5}, "temperature"),
    ({"model": "gpt-4o-mini", "messages": CONVERSATION, "temperature": "hot"}, "temperature"),
    ({"model": "gpt-4o-mini", "messages": CONVERSATION, "stream": True, "stream_options": "usage"}, "stream_options"),
])
def test_invalid_request_rejected(services, body, param):
    response = httpx.post(f"{services['llm'].url}/v1/chat/completions", json=body, timeout=10)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
