"""The reference management service's FastAPI app: users and quotas, agents, assignments, chat.

Environment: `SERVER_HOST`/`SERVER_PORT` (informational: uvicorn's own options bind the socket),
`DB_*` or `DATABASE_URI`, `HOMUNCULY_BASE_URL` (the agent service), `HOMUNCULY_API_KEY` (sent to it as
the `X-API-Key` header).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from homunculy_nb import __version__
from homunculy_nb.services._database import conninfo_from_env, describe, find_nul
from homunculy_nb.services._observability import configure_logging, configure_telemetry, instrument_app
from homunculy_nb.services.management.quotas import TIERS, cost_of
from homunculy_nb.services.management.store import Conflict, Forbidden, ManagementStore

logger = logging.getLogger(__name__)

SERVICE_NAME = "management-app"


class ApiError(Exception):
    """An error returned as `{"error": message}` with HTTP status `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Body(BaseModel):
    """A request body stored in PostgreSQL, which cannot hold NUL characters in text or JSONB."""

    @model_validator(mode="before")
    @classmethod
    def _reject_nul(cls, data: Any) -> Any:
        where = find_nul(data)
        if where is not None:
            raise ValueError(f"{where} contains a NUL character (\\u0000), which cannot be stored. Remove it.")
        return data


class Personality(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    description: str | None = None
    traits: dict[str, Any] | None = None
    # The agent stores the mood in a VARCHAR(50) column.
    mood: str | None = Field(default=None, max_length=50)


class Configuration(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    provider: str | None = Field(default=None, max_length=50)
    model_name: str | None = Field(default=None, max_length=100)
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    personality: Personality | None = None


# Maximum lengths are the column sizes of the service's changelog.
class UserCreate(_Body):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(min_length=1, max_length=200)
    subscription_tier: Literal["free", "premium", "enterprise"] = "free"


class AgentCreate(_Body):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    provider: str | None = Field(default=None, max_length=50)
    model_name: str | None = Field(default=None, max_length=100)
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)
    personality: dict[str, Any] | None = None


class AgentUpdate(AgentCreate):
    name: str | None = Field(default=None, min_length=1, max_length=200)  # type: ignore[assignment]

    @model_validator(mode="after")
    def _reject_null_required(self) -> AgentUpdate:
        # Every column but system_prompt is NOT NULL; a null would reach PostgreSQL as a constraint error.
        nulls = sorted(key for key in self.model_fields_set if key != "system_prompt" and getattr(self, key) is None)
        if nulls:
            raise ValueError(f"{', '.join(nulls)} cannot be null. Leave a field out to keep its value.")
        return self


class AssignmentCreate(BaseModel):
    agent_id: uuid.UUID
    allocation_strategy: Literal["shared", "dedicated", "pool"] = "shared"
    priority: int = 0
    max_concurrent_requests: int = Field(default=1, gt=0)


class ChatRequest(_Body):
    user_id: uuid.UUID
    message: str = Field(min_length=1)
    agent_id: uuid.UUID | None = None
    configuration: Configuration | None = None
    context: dict[str, Any] = Field(default_factory=dict)


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ApiError(400, f"{what} {value!r} is not a UUID.") from None


def _agent_configuration(agent: dict[str, Any] | None, requested: Configuration | None) -> dict[str, Any]:
    """Merge the agent's stored settings with the request's; the request's values win."""
    merged: dict[str, Any] = {}
    if agent is not None:
        merged = {key: agent[key] for key in ("provider", "model_name", "system_prompt", "temperature", "max_tokens")
                  if agent.get(key) is not None}
        if agent.get("personality"):
            merged["personality"] = dict(agent["personality"])
    if requested is not None:
        values = requested.model_dump(exclude_none=True)
        personality = values.pop("personality", None)
        merged.update(values)
        if personality:
            merged["personality"] = {**merged.get("personality", {}), **personality}
    return merged


def create_app() -> FastAPI:
    """Build the management app from the environment."""
    configure_logging(SERVICE_NAME)
    conninfo = conninfo_from_env()
    if conninfo is None:
        raise ValueError("The management service needs a database: set DB_HOST (and DB_PORT, DB_NAME, DB_USER, "
                         "DB_PASSWORD) or DATABASE_URI.")
    agent_url = os.environ.get("HOMUNCULY_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
    agent_api_key = os.environ.get("HOMUNCULY_API_KEY", "")
    telemetry = configure_telemetry(SERVICE_NAME)
    store = ManagementStore(conninfo)
    state: dict[str, Any] = {}
    in_flight: Counter[tuple[str, str]] = Counter()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await store.check()
        except psycopg.errors.UndefinedTable as exc:
            raise RuntimeError(
                f"The database {describe(conninfo)} has no `users` table. Apply "
                "homunculy_nb/services/management/changelog/changelog.xml with `python -m homunculy_nb.migrations`."
            ) from exc
        timeout = httpx.Timeout(connect=10.0, read=180.0, write=30.0, pool=30.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            state["http"] = http
            logger.info("Management service ready", extra={"homunculy_base_url": agent_url,
                                                           "database": describe(conninfo)})
            yield
        telemetry.shutdown()

    app = FastAPI(title="Homunculy management service (homunculy-nb reference)", version=__version__,
                  lifespan=lifespan)
    instrument_app(app)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in error['loc'] if p != 'body') or 'body'}: {error['msg']}"
                    for error in exc.errors()]
        return JSONResponse({"error": "Invalid request: " + "; ".join(problems)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback after this handler; the body keeps the `{"error": ...}` shape.
        return JSONResponse({"error": f"Internal error while handling {request.method} {request.url.path}: "
                                      f"{type(exc).__name__}"}, status_code=500)

    def health() -> dict[str, str]:
        return {"status": "healthy", "service": "management-service", "version": __version__}

    app.get("/health")(health)
    app.get("/api/v1/health")(health)

    # Users

    @app.post("/api/v1/users", status_code=201)
    async def create_user(body: UserCreate) -> dict[str, Any]:
        try:
            user = await store.create_user(body.email, body.name, body.subscription_tier)
        except Conflict as exc:
            raise ApiError(409, str(exc)) from exc
        logger.info("User created", extra={"user_id": user["id"], "tier": body.subscription_tier})
        return user

    @app.get("/api/v1/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, Any]:
        user = await store.get_user(_uuid(user_id, "User id"))
        if user is None:
            raise ApiError(404, f"User {user_id} not found.")
        return user

    @app.get("/api/v1/tiers")
    async def tiers() -> dict[str, Any]:
        return {name: vars(limits) for name, limits in TIERS.items()}

    # Agents

    @app.post("/api/v1/agents", status_code=201)
    async def create_agent(body: AgentCreate) -> dict[str, Any]:
        return await store.create_agent(body.model_dump())

    @app.get("/api/v1/agents")
    async def list_agents() -> dict[str, Any]:
        agents = await store.list_agents()
        return {"agents": agents, "count": len(agents)}

    @app.get("/api/v1/agents/{agent_id}")
    async def get_agent(agent_id: str) -> dict[str, Any]:
        agent = await store.get_agent(_uuid(agent_id, "Agent id"))
        if agent is None:
            raise ApiError(404, f"Agent {agent_id} not found.")
        return agent

    @app.put("/api/v1/agents/{agent_id}")
    async def update_agent(agent_id: str, body: AgentUpdate) -> dict[str, Any]:
        fields = body.model_dump(exclude_unset=True)
        if not fields:
            raise ApiError(400, "The body sets no field. Send at least one of: " + ", ".join(AgentCreate.model_fields))
        agent = await store.update_agent(_uuid(agent_id, "Agent id"), fields)
        if agent is None:
            raise ApiError(404, f"Agent {agent_id} not found.")
        return agent

    @app.delete("/api/v1/agents/{agent_id}", status_code=204)
    async def delete_agent(agent_id: str) -> Response:
        if not await store.delete_agent(_uuid(agent_id, "Agent id")):
            raise ApiError(404, f"Agent {agent_id} not found.")
        return Response(status_code=204)

    async def set_active(agent_id: str, active: bool) -> dict[str, Any]:
        agent = await store.update_agent(_uuid(agent_id, "Agent id"), {"is_active": active})
        if agent is None:
            raise ApiError(404, f"Agent {agent_id} not found.")
        return agent

    @app.post("/api/v1/agents/{agent_id}/activate")
    async def activate_agent(agent_id: str) -> dict[str, Any]:
        return await set_active(agent_id, True)

    @app.post("/api/v1/agents/{agent_id}/deactivate")
    async def deactivate_agent(agent_id: str) -> dict[str, Any]:
        return await set_active(agent_id, False)

    # Assignments

    @app.post("/api/v1/users/{user_id}/assignments", status_code=201)
    async def assign_agent(user_id: str, body: AssignmentCreate) -> dict[str, Any]:
        user_id = _uuid(user_id, "User id")
        if await store.get_user(user_id) is None:
            raise ApiError(404, f"User {user_id} not found.")
        if await store.get_agent(str(body.agent_id)) is None:
            raise ApiError(404, f"Agent {body.agent_id} not found.")
        try:
            return await store.assign(user_id, str(body.agent_id), body.allocation_strategy, body.priority,
                                      body.max_concurrent_requests)
        except Conflict as exc:
            raise ApiError(409, str(exc)) from exc
        except Forbidden as exc:
            raise ApiError(403, str(exc)) from exc

    @app.get("/api/v1/users/{user_id}/assignments")
    async def list_assignments(user_id: str) -> dict[str, Any]:
        assignments = await store.list_assignments(_uuid(user_id, "User id"))
        return {"assignments": assignments, "count": len(assignments)}

    @app.delete("/api/v1/users/{user_id}/assignments/{agent_id}", status_code=204)
    async def unassign_agent(user_id: str, agent_id: str) -> Response:
        if not await store.unassign(_uuid(user_id, "User id"), _uuid(agent_id, "Agent id")):
            raise ApiError(404, f"Agent {agent_id} is not assigned to user {user_id}.")
        return Response(status_code=204)

    # Chat

    @app.post("/api/v1/chat")
    async def chat(body: ChatRequest) -> Any:
        user_id = str(body.user_id)
        try:
            agent, max_concurrent = await store.choose_agent(user_id, str(body.agent_id) if body.agent_id else None)
        except Forbidden as exc:
            raise ApiError(403, str(exc)) from exc

        # The concurrency check comes first, so a rejected request does not count against the quota.
        slot = (user_id, str(agent["id"]) if agent else "")
        if max_concurrent and in_flight[slot] >= max_concurrent:
            logger.warning("Concurrent request limit reached", extra={"user_id": user_id, "agent_id": slot[1]})
            # Same fields as a quota 429, so a client reads one shape; the slot frees when a request ends.
            return JSONResponse({
                "error": f"The assignment allows {max_concurrent} concurrent request(s) to agent {slot[1]}. "
                         "Wait for the running one to finish.",
                "limit": "max_concurrent_requests",
                "max": max_concurrent,
                "used": in_flight[slot],
            }, status_code=429)

        in_flight[slot] += 1
        try:
            return await _admit_and_forward(store, state["http"], agent_url, agent_api_key, user_id, agent, body)
        finally:
            in_flight[slot] -= 1

    return app


async def _admit_and_forward(store: ManagementStore, http: httpx.AsyncClient, agent_url: str, api_key: str,
                             user_id: str, agent: dict[str, Any] | None, body: ChatRequest) -> Any:
    """Count the request against the user's quota, forward it to the agent, and record its usage."""
    try:
        admitted = await store.admit(user_id, str(agent["id"]) if agent else None)
    except Forbidden as exc:
        raise ApiError(403, str(exc)) from exc
    if admitted is None:
        raise ApiError(404, f"User {user_id} not found. Create it with POST /api/v1/users.")
    if not isinstance(admitted, tuple):
        logger.warning("Quota exceeded", extra={"user_id": user_id, "limit": admitted.limit})
        response = admitted.body(datetime.now(timezone.utc))
        return JSONResponse(response, status_code=429, headers={"Retry-After": str(response["retry_after_seconds"])})
    usage_id, _ = admitted

    try:
        reply = await _forward(http, agent_url, api_key, user_id, body, _agent_configuration(agent, body.configuration))
    except BaseException:
        # The user got no answer, so the request must not count against the quota.
        await asyncio.shield(store.cancel_usage(usage_id, user_id))
        raise

    metadata = reply.get("metadata") or {}
    tokens = int(metadata.get("tokens_used") or 0)
    cost = cost_of(str(metadata.get("model_used") or ""), tokens)
    today = await store.record_usage(usage_id, user_id, tokens, cost)
    logger.info("Chat forwarded", extra={"user_id": user_id, "tokens": tokens, "cost_usd": float(cost)})
    return {
        "message": reply.get("message", ""),
        "confidence": reply.get("confidence"),
        "reasoning": reply.get("reasoning"),
        "usage": {"tokens_used": tokens, "cost": float(cost), **today},
    }


async def _forward(http: httpx.AsyncClient, agent_url: str, api_key: str, user_id: str, body: ChatRequest,
                   configuration: dict[str, Any]) -> dict[str, Any]:
    payload = {"user_id": user_id, "message": body.message, "configuration": configuration,
               "context": body.context, "include_audio": False}
    headers = {"X-API-Key": api_key} if api_key else {}
    try:
        response = await http.post(f"{agent_url}/api/v1/agents/execute", json=payload, headers=headers)
    except httpx.HTTPError as exc:
        logger.error("Calling the agent service failed: %r", exc, extra={"user_id": user_id})
        raise ApiError(502, f"The agent service at {agent_url} cannot be reached: {exc!r}") from exc
    if response.status_code != 200:
        logger.error("The agent service returned HTTP %s", response.status_code, extra={"user_id": user_id})
        raise ApiError(502, f"The agent service returned HTTP {response.status_code}: {response.text[:300]}")
    return response.json()

