"""The agent service's settings, read from the environment variables the real service uses."""

from __future__ import annotations

import os
from dataclasses import dataclass

from homunculy_nb.services._database import conninfo_from_env

OPENAI_BASE_URL = "https://api.openai.com/v1"


def _first_env(*names: str, default: str = "") -> str:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return default


def _number_env(name: str, default: float, kind: type = float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}. Set it like {name}={default}.") from None


@dataclass(frozen=True)
class Settings:
    """Everything the agent service reads from its environment."""

    llm_base_url: str
    llm_api_key: str
    default_model: str
    default_temperature: float
    default_max_tokens: int
    elevenlabs_api_key: str
    elevenlabs_model_id: str
    elevenlabs_streaming_model_id: str
    default_voice_id: str
    local_synthesizer: str
    conninfo: str | None
    debug: bool

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings; `OPENAI_BASE_URL` is accepted as well because the real service reads it."""
        local_synthesizer = _first_env("TTS_LOCAL_SYNTHESIZER", default="auto").lower()
        if local_synthesizer not in ("auto", "espeak-ng", "tone"):
            raise ValueError(
                f"TTS_LOCAL_SYNTHESIZER={local_synthesizer!r} is not supported. Use auto, espeak-ng or tone."
            )
        return cls(
            llm_base_url=_first_env("LLM_OPENAI_BASE_URL", "OPENAI_BASE_URL", default=OPENAI_BASE_URL).rstrip("/"),
            llm_api_key=_first_env("LLM_OPENAI_API_KEY", "OPENAI_API_KEY"),
            default_model=_first_env("LLM_DEFAULT_MODEL", default="gpt-4o-mini"),
            default_temperature=_number_env("LLM_DEFAULT_TEMPERATURE", 0.7),
            default_max_tokens=int(_number_env("LLM_DEFAULT_MAX_TOKENS", 2000, int)),
            elevenlabs_api_key=_first_env("ELEVENLABS_API_KEY", "TTS_ELEVENLABS_API_KEY"),
            elevenlabs_model_id=_first_env("TTS_ELEVENLABS_MODEL_ID", default="eleven_multilingual_v2"),
            elevenlabs_streaming_model_id=_first_env(
                "TTS_ELEVENLABS_STREAMING_MODEL_ID", default="eleven_turbo_v2_5"
            ),
            default_voice_id=_first_env("TTS_ELEVENLABS_VOICE_ID", "TTS_VOICE_ID", default="21m00Tcm4TlvDq8ikWAM"),
            local_synthesizer=local_synthesizer,
            conninfo=conninfo_from_env(),
            debug=_first_env("APP_DEBUG", default="false").lower() in ("1", "true", "yes"),
        )
