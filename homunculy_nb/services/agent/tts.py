"""Text-to-speech for the agent service: ElevenLabs, espeak-ng, or a generated tone.

Local speech is encoded to MP3 with `lameenc` (LAME bindings from PyPI) when it is installed. Without
it the audio stays WAV and `format` is "wav", because the standard library has no MP3 encoder.
"""

from __future__ import annotations

import abc
import array
import asyncio
import io
import logging
import math
import shutil
import wave
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

ELEVENLABS_URL = "https://api.elevenlabs.io/v1/text-to-speech/{voice_id}/stream"
TONE_SAMPLE_RATE = 16_000


class SynthesisError(Exception):
    """Raised when a synthesizer fails to produce audio for a sentence."""


@dataclass(frozen=True)
class AudioClip:
    """Encoded audio for one piece of text."""

    data: bytes
    format: str
    duration_ms: int


def encode_pcm(samples: bytes, sample_rate: int) -> tuple[bytes, str]:
    """Encode 16-bit mono PCM as MP3 when `lameenc` is installed, else as WAV; return (data, format)."""
    try:
        import lameenc
    except ImportError:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(sample_rate)
            wav.writeframes(samples)
        return buffer.getvalue(), "wav"

    encoder = lameenc.Encoder()
    encoder.set_bit_rate(48)
    encoder.set_in_sample_rate(sample_rate)
    encoder.set_channels(1)
    encoder.set_quality(7)
    return bytes(encoder.encode(samples) + encoder.flush()), "mp3"


class Synthesizer(abc.ABC):
    """Turns one sentence into audio."""

    name: str

    @abc.abstractmethod
    async def synthesize(self, text: str, voice_id: str) -> AudioClip:
        """Return the audio for `text`; raise `SynthesisError` when that fails."""


class ToneSynthesizer(Synthesizer):
    """A hum whose pitch steps per word and whose length follows the text, when no voice is available."""

    name = "tone"

    async def synthesize(self, text: str, voice_id: str) -> AudioClip:
        return await asyncio.to_thread(self._render, text)

    def _render(self, text: str) -> AudioClip:
        samples = array.array("h")
        for index, word in enumerate(text.split() or ["..."]):
            # About 65 ms per character, like speech at roughly 15 characters per second.
            length = int(TONE_SAMPLE_RATE * max(0.12, 0.065 * len(word)))
            frequency = 180 + 40 * (index % 4)
            for n in range(length):
                envelope = math.sin(math.pi * n / length)
                samples.append(int(6000 * envelope * math.sin(2 * math.pi * frequency * n / TONE_SAMPLE_RATE)))
            samples.extend([0] * int(TONE_SAMPLE_RATE * 0.06))

        data, audio_format = encode_pcm(samples.tobytes(), TONE_SAMPLE_RATE)
        return AudioClip(data, audio_format, int(1000 * len(samples) / TONE_SAMPLE_RATE))


class EspeakSynthesizer(Synthesizer):
    """Speech from the espeak-ng command-line synthesizer."""

    name = "espeak-ng"

    def __init__(self, executable: str) -> None:
        self.executable = executable

    async def synthesize(self, text: str, voice_id: str) -> AudioClip:
        process = await asyncio.create_subprocess_exec(
            self.executable, "--stdout", "-v", "en-us", "-s", "165", "--", text,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            stdout, stderr = await process.communicate()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.kill()
                await process.wait()
            raise
        if process.returncode != 0:
            raise SynthesisError(f"espeak-ng exited with {process.returncode}: {stderr.decode(errors='replace')[:200]}")
        return await asyncio.to_thread(self._encode, stdout)

    @staticmethod
    def _encode(wav_bytes: bytes) -> AudioClip:
        try:
            with wave.open(io.BytesIO(wav_bytes)) as wav:
                rate = wav.getframerate()
                frames = wav.readframes(wav.getnframes())
        except (wave.Error, EOFError) as exc:
            raise SynthesisError(f"espeak-ng wrote audio that is not WAV: {exc}") from exc
        data, audio_format = encode_pcm(frames, rate)
        return AudioClip(data, audio_format, int(1000 * len(frames) / 2 / rate))


class ElevenLabsSynthesizer(Synthesizer):
    """Speech from the ElevenLabs streaming API (MP3); needs an API key and network access."""

    name = "elevenlabs"

    def __init__(self, http: httpx.AsyncClient, api_key: str, model_id: str) -> None:
        self.http = http
        self._api_key = api_key
        self.model_id = model_id

    def __repr__(self) -> str:
        return f"ElevenLabsSynthesizer(model_id={self.model_id!r})"

    async def synthesize(self, text: str, voice_id: str) -> AudioClip:
        url = ELEVENLABS_URL.format(voice_id=voice_id)
        body = {"text": text, "model_id": self.model_id}
        try:
            response = await self.http.post(url, json=body, headers={"xi-api-key": self._api_key},
                                            params={"output_format": "mp3_44100_64"})
        except httpx.HTTPError as exc:
            raise SynthesisError(f"Calling ElevenLabs failed: {exc!r}") from exc
        if response.status_code != 200:
            raise SynthesisError(f"ElevenLabs returned HTTP {response.status_code}: {response.text[:200]}")
        # 64 kbit/s MP3: 8 bytes per millisecond.
        return AudioClip(response.content, "mp3", len(response.content) // 8)


def choose_synthesizer(http: httpx.AsyncClient, elevenlabs_api_key: str, elevenlabs_model_id: str,
                       local: str) -> Synthesizer:
    """Pick ElevenLabs when a key is set, else espeak-ng when installed (or `local` forces one), else a tone."""
    if elevenlabs_api_key:
        return ElevenLabsSynthesizer(http, elevenlabs_api_key, elevenlabs_model_id)

    executable = shutil.which("espeak-ng")
    if local == "espeak-ng" and executable is None:
        raise ValueError("TTS_LOCAL_SYNTHESIZER=espeak-ng, but espeak-ng is not installed. "
                         "Run `apt-get install espeak-ng` or set TTS_LOCAL_SYNTHESIZER=tone.")
    if local in ("auto", "espeak-ng") and executable is not None:
        return EspeakSynthesizer(executable)

    if local == "auto":
        logger.warning("espeak-ng is not installed; audio chunks carry a generated tone instead of speech")
    return ToneSynthesizer()
