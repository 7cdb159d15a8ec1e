"""Streaming calls to an OpenAI-compatible chat-completions API, traced with `gen_ai.*` attributes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

logger = logging.getLogger(__name__)


class LLMError(Exception):
    """Raised when the LLM server rejects a request, cannot be reached, or sends an unreadable stream."""


@dataclass
class Completion:
    """The result of one streamed completion, filled in while it streams."""

    model: str
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def output_tokens(self) -> int:
        return self.usage.get("completion_tokens", 0)

    @property
    def input_tokens(self) -> int:
        return self.usage.get("prompt_tokens", 0)

    @property
    def total_tokens(self) -> int:
        return self.usage.get("total_tokens", self.input_tokens + self.output_tokens)


class LLMClient:
    """A chat-completions client over one shared `httpx.AsyncClient`."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str, tracer: trace.Tracer) -> None:
        self.http = http
        self.base_url = base_url
        self.api_key = api_key
        self.tracer = tracer

    async def stream(self, completion: Completion, messages: list[dict[str, str]], temperature: float,
                     max_tokens: int) -> AsyncIterator[str]:
        """Yield the reply's text pieces as they arrive; `completion` contains the usage once the stream ends."""
        body: dict[str, Any] = {
            "model": completion.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Authorization": f"Bearer {self.api_key or 'not-set'}"}
        attributes = {
            "gen_ai.system": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": completion.model,
            "gen_ai.request.temperature": temperature,
            "gen_ai.request.max_tokens": max_tokens,
            "server.address": httpx.URL(self.base_url).host,
        }

        with self.tracer.start_as_current_span(
            f"chat {completion.model}", kind=SpanKind.CLIENT, attributes=attributes
        ) as span:
            try:
                async with self.http.stream(
                    "POST", f"{self.base_url}/chat/completions", json=body, headers=headers
                ) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:300]
                        raise LLMError(
                            f"The LLM at {self.base_url} returned HTTP {response.status_code}: {detail}"
                        )
                    async for piece in self._pieces(response, completion):
                        yield piece
            except httpx.HTTPError as exc:
                error = LLMError(f"Calling the LLM at {self.base_url} failed: {exc!r}")
                span.set_status(Status(StatusCode.ERROR, str(error)))
                raise error from exc
            except LLMError as exc:
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                raise
            finally:
                span.set_attribute("gen_ai.usage.input_tokens", completion.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", completion.output_tokens)
                span.set_attribute("gen_ai.response.model", completion.model)
                if completion.finish_reason:
                    span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason])

    async def _pieces(self, response: httpx.Response, completion: Completion) -> AsyncIterator[str]:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError as exc:
                raise LLMError(f"The LLM sent a stream event that is not JSON: {data[:120]!r}") from exc

            if chunk.get("model"):
                completion.model = chunk["model"]
            if chunk.get("usage"):
                completion.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                if choice.get("finish_reason"):
                    completion.finish_reason = choice["finish_reason"]
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    completion.text += piece
                    yield piece
