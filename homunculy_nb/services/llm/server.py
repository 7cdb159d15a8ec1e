"""An OpenAI-compatible chat-completions server that generates text locally, for offline development.

Environment:
- `LOCAL_LLM_TTFT_MS`: delay before the first token, in milliseconds (default 300).
- `LOCAL_LLM_TOKENS_PER_SECOND`: streaming rate after the first token (default 50).
- `LOCAL_LLM_MODELS`: comma-separated model ids listed by `/v1/models` (any id is accepted in requests).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from homunculy_nb.services._observability import configure_logging, configure_telemetry, instrument_app
from homunculy_nb.services.llm.generator import Reply, count_prompt_tokens, generate_reply

logger = logging.getLogger(__name__)

SERVICE_NAME = "llm"
STAND_IN_NOTICE = (
    "Local stand-in for an OpenAI-compatible API (homunculy-nb): replies are generated from templates, "
    "seeded from the conversation, not by a language model."
)
DEFAULT_MODELS = "gpt-4o-mini,gpt-4o,gpt-4.1-mini"


def _float_env(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number. Set it to a number such as {default:g}.") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} is below {minimum:g}. Set it to at least {minimum:g}.")
    return value


class _Settings:
    def __init__(self) -> None:
        self.ttft_s = _float_env("LOCAL_LLM_TTFT_MS", 300.0, 0.0) / 1000
        tokens_per_second = _float_env("LOCAL_LLM_TOKENS_PER_SECOND", 50.0, 0.001)
        self.token_interval_s = 1 / tokens_per_second
        self.models = [m.strip() for m in os.environ.get("LOCAL_LLM_MODELS", DEFAULT_MODELS).split(",") if m.strip()]


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


def _validate(body: Any) -> JSONResponse | None:
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _error(400, "Missing required parameter: 'model'.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array of {role, content} objects.", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool", "developer"):
            return _error(400, f"messages[{index}] needs a 'role' of system, user, assistant, tool or developer.",
                          f"messages[{index}].role")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        return _error(400, f"max_tokens={limit!r} is invalid; it must be an integer of at least 1.", "max_tokens")
    if body.get("n", 1) != 1:
        return _error(400, "This local stand-in supports only n=1.", "n")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                                    or not 0 <= temperature <= 2):
        return _error(400, f"temperature={temperature!r} is invalid; it must be a number from 0 to 2.", "temperature")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        return _error(400, "'stream_options' must be an object such as {\"include_usage\": true}.", "stream_options")
    return None


def _usage(prompt_tokens: int, reply: Reply) -> dict[str, int]:
    completion = len(reply.pieces)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def create_app() -> FastAPI:
    """Build the local LLM app from the environment."""
    configure_logging(SERVICE_NAME)
    settings = _Settings()
    telemetry = configure_telemetry(SERVICE_NAME)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info(
            STAND_IN_NOTICE,
            extra={"ttft_ms": settings.ttft_s * 1000, "tokens_per_second": 1 / settings.token_interval_s},
        )
        yield
        telemetry.shutdown()

    app = FastAPI(title="homunculy-nb local LLM (stand-in)", lifespan=lifespan)
    instrument_app(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy", "service": "local-llm", "notice": STAND_IN_NOTICE}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "homunculy-nb local stand-in"}
            for model in settings.models
        ]
        return {"object": "list", "data": data, "notice": STAND_IN_NOTICE}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "The request body is not valid JSON.")
        invalid = _validate(body)
        if invalid is not None:
            return invalid

        model = body["model"]
        messages = body["messages"]
        reply = generate_reply(model, messages, body.get("max_completion_tokens", body.get("max_tokens")))
        prompt_tokens = count_prompt_tokens(messages)
        completion_id = "chatcmpl-" + hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:24]
        logger.info(
            "Generating a stand-in reply",
            extra={"model": model, "prompt_tokens": prompt_tokens, "completion_tokens": len(reply.pieces),
                   "stream": bool(body.get("stream"))},
        )

        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream(settings, completion_id, model, reply, prompt_tokens, include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        await asyncio.sleep(settings.ttft_s + settings.token_interval_s * max(len(reply.pieces) - 1, 0))
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "local-stand-in",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }],
            "usage": _usage(prompt_tokens, reply),
        }

    return app


async def _stream(settings: _Settings, completion_id: str, model: str, reply: Reply, prompt_tokens: int,
                  include_usage: bool) -> AsyncIterator[str]:
    created = int(time.time())

    def event(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        chunk: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "local-stand-in",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if include_usage:
            chunk["usage"] = None
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": "", "refusal": None})
    await asyncio.sleep(settings.ttft_s)

    for index, piece in enumerate(reply.pieces):
        if index:
            await asyncio.sleep(settings.token_interval_s)
        yield event({"content": piece})

    yield event({}, reply.finish_reason)
    if include_usage:
        usage_chunk = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "local-stand-in", "choices": [], "usage": _usage(prompt_tokens, reply),
        }
        yield f"data: {json.dumps(usage_chunk)}\n\n"
    yield "data: [DONE]\n\n"
