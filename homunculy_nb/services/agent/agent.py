"""The agent: turns a user's message into a streamed reply, with history, audio and telemetry."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from homunculy_nb.services.agent.llm_client import Completion, LLMClient
from homunculy_nb.services.agent.schemas import AgentConfiguration, ExecuteRequest, system_prompt
from homunculy_nb.services.agent.settings import Settings
from homunculy_nb.services.agent.store import MemoryStore, PostgresStore
from homunculy_nb.services.agent.tts import AudioClip, Synthesizer

logger = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """Estimate a text's token count from its words and punctuation marks."""
    return len(_WORD.findall(text))


class SentenceSplitter:
    """Collects streamed text and releases whole sentences, so speech can start before the text ends."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, piece: str) -> list[str]:
        """Add a piece of text and return the sentences it completed."""
        self._buffer += piece
        parts = _SENTENCE_END.split(self._buffer)
        self._buffer = parts.pop()
        return [part.strip() for part in parts if part.strip()]

    def flush(self) -> list[str]:
        """Return what is left once the text has ended."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []


@dataclass
class PreparedTurn:
    """A turn ready to stream: where it is stored and what the LLM gets."""

    thread_id: str
    model: str
    temperature: float
    max_tokens: int
    messages: list[dict[str, str]]


class Agent:
    """The agent service's behaviour, shared by the execute endpoint and the chat WebSocket."""

    def __init__(self, settings: Settings, llm: LLMClient, synthesizer: Synthesizer,
                 store: PostgresStore | MemoryStore, tracer: trace.Tracer, meter: Any) -> None:
        self.settings = settings
        self.llm = llm
        self.synthesizer = synthesizer
        self.store = store
        self.tracer = tracer
        self.time_to_first_chunk = meter.create_histogram(
            "homunculy.chat.time_to_first_chunk", unit="ms",
            description="Time from receiving a chat request to sending its first text chunk",
        )

    async def prepare(self, user_id: str, message: str, configuration: AgentConfiguration,
                      context: dict[str, Any]) -> PreparedTurn:
        """Store the user's message and build the LLM request from the personality and the history."""
        thread_id, history = await self.store.begin_turn(
            user_id, message, estimate_tokens(message), context, configuration.personality.mood
        )
        messages = [{"role": "system", "content": system_prompt(configuration)}, *history,
                    {"role": "user", "content": message}]
        return PreparedTurn(
            thread_id=thread_id,
            model=configuration.model_name or self.settings.default_model,
            temperature=(configuration.temperature if configuration.temperature is not None
                         else self.settings.default_temperature),
            max_tokens=configuration.max_tokens or self.settings.default_max_tokens,
            messages=messages,
        )

    def stream_reply(self, turn: PreparedTurn, completion: Completion) -> AsyncIterator[str]:
        """Stream the reply's text pieces from the LLM; `completion` contains the totals at the end."""
        return self.llm.stream(completion, turn.messages, turn.temperature, turn.max_tokens)

    async def finish(self, turn: PreparedTurn, completion: Completion) -> None:
        """Store the assistant's reply."""
        tokens = completion.output_tokens or estimate_tokens(completion.text)
        await self.store.finish_turn(turn.thread_id, completion.text, tokens, completion.model)

    async def synthesize(self, text: str, voice_id: str) -> AudioClip:
        """Synthesize one piece of text inside a span named after the synthesizer."""
        attributes = {"tts.provider": self.synthesizer.name, "tts.voice_id": voice_id, "tts.characters": len(text)}
        with self.tracer.start_as_current_span("tts.synthesize", attributes=attributes) as span:
            clip = await self.synthesizer.synthesize(text, voice_id)
            span.set_attribute("tts.audio.bytes", len(clip.data))
            span.set_attribute("tts.audio.duration_ms", clip.duration_ms)
            span.set_attribute("tts.audio.format", clip.format)
            return clip

    async def execute(self, request: ExecuteRequest) -> dict[str, Any]:
        """Answer one message without streaming; raises `LLMError` when the LLM fails."""
        started = time.perf_counter()
        turn = await self.prepare(request.user_id, request.message, request.configuration, request.context)
        completion = Completion(model=turn.model)
        async for _ in self.stream_reply(turn, completion):
            pass
        await self.finish(turn, completion)

        audio = None
        voice_id = self.settings.default_voice_id
        if request.include_audio and completion.text:
            clip = await self.synthesize(completion.text, voice_id)
            audio = {
                "data": base64.b64encode(clip.data).decode(),
                "format": clip.format,
                "encoding": "base64",
                "size_bytes": len(clip.data),
                "voice_id": voice_id,
                "duration_ms": clip.duration_ms,
                "generated": True,
            }

        personality = request.configuration.personality
        return {
            "message": completion.text,
            "confidence": 0.9 if completion.finish_reason == "stop" else 0.6,
            "reasoning": (f"Replied as {personality.name} ({personality.mood}) with {completion.model}; "
                          f"finish reason {completion.finish_reason or 'unknown'}."),
            "audio": audio,
            "metadata": {
                "model_used": completion.model,
                "tokens_used": completion.total_tokens,
                "execution_time_ms": round((time.perf_counter() - started) * 1000, 1),
                "tools_called": [],
                "thread_id": turn.thread_id,
                "storage_type": self.store.storage_type,
            },
        }
