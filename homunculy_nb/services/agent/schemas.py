"""Request and response bodies of the agent service, field for field as the real service has them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from homunculy_nb.services._database import find_nul

# Column sizes in the service's changelog: a longer value would fail in PostgreSQL, mid-turn.
MAX_USER_ID = 200
MAX_MODEL_NAME = 100
MAX_MOOD = 50


def timestamp() -> str:
    """Return the current UTC time in ISO 8601, the format of every `timestamp` field."""
    return datetime.now(timezone.utc).isoformat()


class Personality(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = "Homunculy"
    description: str = "a friendly and helpful assistant"
    traits: dict[str, Any] = Field(default_factory=dict)
    mood: str = Field(default="neutral", max_length=MAX_MOOD)


class AgentConfiguration(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    provider: str = "openai"
    model_name: str | None = Field(default=None, max_length=MAX_MODEL_NAME)
    personality: Personality = Field(default_factory=Personality)
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    max_tokens: int | None = Field(default=None, gt=0)


class _StoredRequest(BaseModel):
    """A request whose text is stored in PostgreSQL, which cannot hold NUL characters in text or JSONB."""

    @model_validator(mode="before")
    @classmethod
    def _reject_nul(cls, data: Any) -> Any:
        where = find_nul(data)
        if where is not None:
            raise ValueError(f"{where} contains a NUL character (\\u0000), which cannot be stored. Remove it.")
        return data


class ExecuteRequest(_StoredRequest):
    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID)
    message: str = Field(min_length=1)
    configuration: AgentConfiguration = Field(default_factory=AgentConfiguration)
    context: dict[str, Any] = Field(default_factory=dict)
    include_audio: bool = False


class ChatRequest(_StoredRequest):
    """The body of a `chat_request` WebSocket frame."""

    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1, max_length=MAX_USER_ID)
    message: str = Field(min_length=1)
    configuration: AgentConfiguration = Field(default_factory=AgentConfiguration)
    context: dict[str, Any] = Field(default_factory=dict)
    stream_audio: bool = True
    voice_id: str | None = None


def system_prompt(configuration: AgentConfiguration) -> str:
    """Build the system prompt from the configured prompt and the personality."""
    personality = configuration.personality
    lines = []
    if configuration.system_prompt:
        lines.append(configuration.system_prompt.strip())
    lines.append(f"You are {personality.name}, {personality.description}.")
    if personality.traits:
        traits = ", ".join(f"{key}: {value}" for key, value in personality.traits.items())
        lines.append(f"Your traits are {traits}.")
    lines.append(f"Your current mood is {personality.mood}. Answer in a few spoken-style sentences.")
    return "\n".join(lines)
