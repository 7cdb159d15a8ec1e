"""The reference management service over real HTTP, forwarding to the real agent and LLM services."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest

pytestmark = pytest.mark.integration

TIMEOUT = 30


def api(services: dict[str, Any]) -> str:
    return services["management"].url + "/api/v1"


def create_user(services: dict[str, Any], tier: str = "free") -> dict[str, Any]:
    body = {"email": f"{uuid.uuid4().hex[:10]}@example.org", "name": "Ada", "subscription_tier": tier}
    response = httpx.post(api(services) + "/users", json=body, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()


def create_agent(services: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = httpx.post(api(services) + "/agents", json={"name": "Sage", **fields}, timeout=TIMEOUT)
    assert response.status_code == 201, response.text
    return response.json()


def test_health(services):
    body = httpx.get(api(services) + "/health", timeout=TIMEOUT).json()

    assert body["status"] == "healthy"


@pytest.mark.parametrize("tier, per_minute", [("free", 5), ("premium", 30), ("enterprise", 300)])
def test_user_gets_tier_quota(services, tier, per_minute):
    user = create_user(services, tier)
    details = httpx.get(f"{api(services)}/users/{user['id']}", timeout=TIMEOUT).json()

    assert set(user) >= {"id", "email", "name", "subscription_tier", "is_active"}
    assert user["subscription_tier"] == tier
    assert user["is_active"] is True
    assert details["quota"]["max_requests_per_minute"] == per_minute


@pytest.mark.parametrize("body", [
    {"email": "x@example.org", "name": "X", "subscription_tier": "gold"},
    {"name": "No email"},
])
def test_bad_user_body_is_400(services, body):
    response = httpx.post(api(services) + "/users", json=body, timeout=TIMEOUT)

    assert response.status_code == 400
    assert "error" in response.json()


@pytest.mark.parametrize("path, body, field", [
    ("/users", {"email": "long@example.org", "name": "x" * 201}, "name"),
    ("/users", {"email": "nul@example.org", "name": "A\x00da"}, "name"),
    ("/agents", {"name": "x" * 201}, "name"),
    ("/agents", {"name": "Sage", "personality": {"mood": "\x00"}}, "personality.mood"),
])
def test_unstorable_body_is_400(services, path, body, field):
    response = httpx.post(api(services) + path, json=body, timeout=TIMEOUT)

    assert response.status_code == 400
    assert field in response.json()["error"]


def test_agent_update_null_is_400(services):
    agent = create_agent(services)
    response = httpx.put(f"{api(services)}/agents/{agent['id']}", json={"name": None, "provider": None},
                         timeout=TIMEOUT)
    cleared = httpx.put(f"{api(services)}/agents/{agent['id']}", json={"system_prompt": None}, timeout=TIMEOUT)

    assert response.status_code == 400
    assert "name, provider cannot be null" in response.json()["error"]
    assert cleared.status_code == 200
    assert cleared.json()["name"] == "Sage"


def test_duplicate_email_conflicts(services):
    user = create_user(services)
    body = {"email": user["email"], "name": "Again", "subscription_tier": "free"}

    assert httpx.post(api(services) + "/users", json=body, timeout=TIMEOUT).status_code == 409


def test_agents_crud_and_activation(services):
    agent = create_agent(services, model_name="gpt-4o", personality={"name": "Sage", "mood": "calm"})
    url = f"{api(services)}/agents/{agent['id']}"

    assert httpx.get(url, timeout=TIMEOUT).json()["model_name"] == "gpt-4o"
    assert agent["id"] in [a["id"] for a in httpx.get(api(services) + "/agents", timeout=TIMEOUT).json()["agents"]]
    assert httpx.put(url, json={"temperature": 0.5}, timeout=TIMEOUT).json()["temperature"] == 0.5
    assert httpx.post(url + "/deactivate", timeout=TIMEOUT).json()["is_active"] is False
    assert httpx.post(url + "/activate", timeout=TIMEOUT).json()["is_active"] is True
    assert httpx.delete(url, timeout=TIMEOUT).status_code == 204
    missing = httpx.get(url, timeout=TIMEOUT)
    assert missing.status_code == 404
    assert "error" in missing.json()


def test_agent_bad_id_is_400(services):
    assert httpx.get(api(services) + "/agents/not-a-uuid", timeout=TIMEOUT).status_code == 400


def test_assignment_rules(services):
    owner, other = create_user(services, "premium"), create_user(services, "premium")
    dedicated, shared = create_agent(services), create_agent(services)

    def assign(user, agent, strategy):
        body = {"agent_id": agent["id"], "allocation_strategy": strategy}
        return httpx.post(f"{api(services)}/users/{user['id']}/assignments", json=body, timeout=TIMEOUT)

    assert assign(owner, dedicated, "dedicated").status_code == 201
    assert assign(other, dedicated, "shared").status_code == 409
    assert assign(owner, shared, "pool").status_code == 201
    assert assign(other, shared, "dedicated").status_code == 409
    assert assign(owner, shared, "pool").status_code == 409
    assert assign(owner, shared, "bogus").status_code == 400
    listed = httpx.get(f"{api(services)}/users/{owner['id']}/assignments", timeout=TIMEOUT).json()
    assert listed["count"] == 2


def test_free_tier_allows_one_agent(services):
    user = create_user(services, "free")
    first, second = create_agent(services), create_agent(services)
    url = f"{api(services)}/users/{user['id']}/assignments"

    assert httpx.post(url, json={"agent_id": first["id"]}, timeout=TIMEOUT).status_code == 201
    assert httpx.post(url, json={"agent_id": second["id"]}, timeout=TIMEOUT).status_code == 403


def test_chat_forwards_and_records_usage(services):
    user = create_user(services, "premium")
    agent = create_agent(services, model_name="gpt-4o", personality={"name": "Sage", "mood": "calm"})
    httpx.post(f"{api(services)}/users/{user['id']}/assignments", json={"agent_id": agent["id"]}, timeout=TIMEOUT)

    response = httpx.post(api(services) + "/chat", json={"user_id": user["id"], "message": "How do comets form?"},
                          timeout=TIMEOUT)

    assert response.status_code == 200, response.text
    reply = response.json()
    assert {"message", "confidence", "reasoning"} <= set(reply)
    assert "comets" in reply["message"]
    assert "Sage" in reply["reasoning"]
    with psycopg.connect(services["management_uri"]) as conn:
        tokens, count, cost, agent_id = conn.execute(
            "SELECT tokens_used, request_count, cost, agent_id FROM usage_metrics WHERE user_id = %s", (user["id"],)
        ).fetchone()
        used_tokens, used_requests = conn.execute(
            "SELECT used_tokens_today, used_requests_today FROM user_quotas WHERE user_id = %s", (user["id"],)
        ).fetchone()
    assert tokens == reply["usage"]["tokens_used"]
    assert tokens > 0
    assert count == 1
    assert cost > 0
    assert str(agent_id) == agent["id"]
    assert used_tokens == tokens
    assert used_requests == 1


def test_chat_free_tier_429_after_limit(services):
    user = create_user(services, "free")
    body = {"user_id": user["id"], "message": "Quick question about kites.",
            "configuration": {"max_tokens": 5}}

    statuses = [httpx.post(api(services) + "/chat", json=body, timeout=TIMEOUT).status_code for _ in range(5)]
    rejected = httpx.post(api(services) + "/chat", json=body, timeout=TIMEOUT)

    assert statuses == [200] * 5
    assert rejected.status_code == 429
    error = rejected.json()
    assert error["limit"] == "requests_per_minute"
    assert error["max"] == 5
    assert error["resets_at"]
    assert int(rejected.headers["Retry-After"]) >= 1


def test_failed_forward_not_counted(services):
    user = create_user(services, "free")
    # A constraint the changelog does not have makes the agent fail on this one message.
    marker = f"reject-{uuid.uuid4().hex[:8]}"
    constraint = f"qa_{marker.replace('-', '_')}"
    with psycopg.connect(services["agent_uri"], autocommit=True) as conn:
        conn.execute(f"ALTER TABLE messages ADD CONSTRAINT {constraint} CHECK (content NOT LIKE '%{marker}%')")
    try:
        failed = httpx.post(api(services) + "/chat", json={"user_id": user["id"], "message": f"say {marker}"},
                            timeout=TIMEOUT)
    finally:
        with psycopg.connect(services["agent_uri"], autocommit=True) as conn:
            conn.execute(f"ALTER TABLE messages DROP CONSTRAINT {constraint}")
    details = httpx.get(f"{api(services)}/users/{user['id']}", timeout=TIMEOUT).json()

    assert failed.status_code == 502
    assert "error" in failed.json()
    assert details["quota"]["used_requests_today"] == 0
    assert details["usage"]["requests"] == 0


def test_chat_daily_tokens_limit(services):
    user = create_user(services, "free")
    with psycopg.connect(services["management_uri"]) as conn:
        conn.execute("UPDATE user_quotas SET used_tokens_today = max_tokens_per_day WHERE user_id = %s", (user["id"],))

    rejected = httpx.post(api(services) + "/chat", json={"user_id": user["id"], "message": "hi"}, timeout=TIMEOUT)

    assert rejected.status_code == 429
    assert rejected.json()["limit"] == "tokens_per_day"


@pytest.mark.parametrize("body, status", [
    ({"message": "no user"}, 400),
    ({"user_id": str(uuid.uuid4()), "message": "unknown user"}, 404),
])
def test_chat_bad_requests(services, body, status):
    response = httpx.post(api(services) + "/chat", json=body, timeout=TIMEOUT)

    assert response.status_code == status
    assert "error" in response.json()


def test_chat_trace_spans_three_services(services, otlp):
    user = create_user(services, "enterprise")
    trace_id = uuid.uuid4().hex
    headers = {"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}

    response = httpx.post(api(services) + "/chat", json={"user_id": user["id"], "message": "Why do cats purr?"},
                          headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200

    wanted = {"management-app", "homunculy-app", "llm"}
    spans = otlp.wait_for(lambda spans: wanted <= {s["service"] for s in spans if s["trace_id"] == trace_id})
    in_trace = [span for span in spans if span["trace_id"] == trace_id]
    assert {span["service"] for span in in_trace} >= wanted
    assert any(span["attributes"].get("db.system") == "postgresql" or
               span["attributes"].get("db.system.name") == "postgresql"
               for span in in_trace if span["service"] == "management-app")


def test_assignment_concurrency_limit(services):
    import asyncio

    user = create_user(services, "premium")
    agent = create_agent(services)
    body = {"agent_id": agent["id"], "allocation_strategy": "dedicated", "max_concurrent_requests": 1}
    httpx.post(f"{api(services)}/users/{user['id']}/assignments", json=body, timeout=TIMEOUT)

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            request = {"user_id": user["id"], "message": "Tell me a long story about lighthouses."}
            return await asyncio.gather(*(client.post(api(services) + "/chat", json=request) for _ in range(2)))

    responses = sorted(asyncio.run(both()), key=lambda response: response.status_code)

    assert [response.status_code for response in responses] == [200, 429]
    rejected = responses[1].json()
    assert rejected["limit"] == "max_concurrent_requests"
    assert rejected["max"] == 1
    assert rejected["used"] == 1
    with psycopg.connect(services["management_uri"]) as conn:
        counted = conn.execute("SELECT used_requests_today FROM user_quotas WHERE user_id = %s",
                               (user["id"],)).fetchone()[0]
    assert counted == 1
