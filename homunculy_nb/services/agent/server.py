"""The reference agent service's FastAPI app: health, stateless execute, and the chat WebSocket."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, WebSocket

from homunculy_nb import __version__
from homunculy_nb.services._observability import configure_logging, configure_telemetry, instrument_app
from homunculy_nb.services.agent.agent import Agent
from homunculy_nb.services.agent.llm_client import LLMClient, LLMError
from homunculy_nb.services.agent.schemas import ExecuteRequest
from homunculy_nb.services.agent.settings import Settings
from homunculy_nb.services.agent.store import open_store
from homunculy_nb.services.agent.tts import SynthesisError, choose_synthesizer
from homunculy_nb.services.agent.websocket import ChatConnection

logger = logging.getLogger(__name__)

SERVICE_NAME = "homunculy-app"


def create_app() -> FastAPI:
    """Build the agent app from the environment."""
    configure_logging(SERVICE_NAME)
    settings = Settings.from_env()
    telemetry = configure_telemetry(SERVICE_NAME)
    state: dict[str, Agent] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Like the real service, refuse to start when the database is configured but unreachable.
        store = open_store(settings.conninfo)
        await store.check()

        timeout = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=30.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            synthesizer = choose_synthesizer(http, settings.elevenlabs_api_key,
                                             settings.elevenlabs_streaming_model_id, settings.local_synthesizer)
            llm = LLMClient(http, settings.llm_base_url, settings.llm_api_key, telemetry.tracer)
            state["agent"] = Agent(settings, llm, synthesizer, store, telemetry.tracer, telemetry.meter)
            logger.info(
                "Agent service ready",
                extra={"llm_base_url": settings.llm_base_url, "tts": synthesizer.name,
                       "storage_type": store.storage_type, "default_model": settings.default_model},
            )
            yield
        telemetry.shutdown()

    app = FastAPI(title="Homunculy agent service (homunculy-nb reference)", version=__version__,
                  lifespan=lifespan, debug=settings.debug)
    instrument_app(app)

    def status() -> dict[str, str]:
        return {"status": "healthy", "service": "homunculy-agent", "version": __version__}

    app.get("/")(status)
    app.get("/health")(status)

    @app.post("/api/v1/agents/execute")
    async def execute(request: ExecuteRequest) -> dict[str, Any]:
        try:
            return await state["agent"].execute(request)
        except LLMError as exc:
            logger.error("Execute failed: %s", exc, extra={"user_id": request.user_id})
            raise HTTPException(status_code=502, detail=str(exc)) from exc
        except SynthesisError as exc:
            logger.error("Execute failed: %s", exc, extra={"user_id": request.user_id})
            raise HTTPException(status_code=502, detail=str(exc)) from exc

    @app.websocket("/api/v1/ws/chat")
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        await ChatConnection(websocket, state["agent"]).serve()

    return app
