"""Deterministic reply text for the local LLM stand-in.

Replies are assembled from sentence templates, seeded from the model name and the conversation, so
the same conversation always gets the same reply. They read as plausible sentences about a word taken
from the last user message, but they carry no meaning and never address the question.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")

_STOPWORDS = frozenset(
    "about above after again also because been before being could does doing during every from have "
    "having here into just more most other over same should some such than that their them then there "
    "these they this those through under until very what when where which while will with would your "
    "hello please thanks thank tell know want like explain describe actually really maybe".split()
)

_OPENERS = (
    "Good question.",
    "Thanks for asking.",
    "Let me think about that.",
    "Here is how I see it.",
    "That is worth a closer look.",
    "Happy to help with that.",
)

_TEMPLATES = (
    "The short answer is that {topic} depends on the {noun}.",
    "Most people find that a {adj} {noun} makes {topic} easier to {verb}.",
    "If you {verb} the {noun} first, the rest of {topic} tends to follow.",
    "I would start by looking at the {noun} and then {verb} it step by step.",
    "A {adj} {noun} is often the best place to begin.",
    "It helps to {verb} one {noun} at a time and check the result.",
    "In my experience, {topic} rewards patience more than speed.",
    "That said, every {noun} has its own costs.",
    "You could also {verb} a {adj} {noun} and compare the two.",
    "When {topic} feels stuck, a {adj} {noun} usually shows why.",
    "The {noun} matters less than how you {verb} it.",
    "Keep the {noun} simple, and {topic} stays easy to {verb}.",
)

_NOUNS = ("plan", "schedule", "approach", "question", "detail", "pattern", "routine", "example", "goal", "draft")
_ADJECTIVES = ("small", "clear", "steady", "careful", "simple", "practical", "gentle", "focused", "quick")
_VERBS = ("review", "adjust", "test", "measure", "sketch", "explain", "revisit", "organize", "compare")


def tokenize(text: str) -> list[str]:
    """Split text into word and punctuation tokens, the unit of `max_tokens` and `usage`."""
    return _TOKEN.findall(text)


def message_text(message: dict[str, Any]) -> str:
    """Return a chat message's text, joining the text parts of a multi-part content."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def count_prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    """Count a conversation's tokens, with a fixed overhead per message as chat formats add."""
    return sum(len(tokenize(message_text(message))) + 4 for message in messages) + 2


def _topic(messages: Sequence[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            words = re.findall(r"[A-Za-z]{4,}", message_text(message))
            candidates = [word.lower() for word in words if word.lower() not in _STOPWORDS]
            if candidates:
                return max(candidates, key=len)
            break
    return "this"


@dataclass(frozen=True)
class Reply:
    """A generated reply cut to `max_tokens`: the pieces to stream and why it ended."""

    pieces: list[str]
    finish_reason: str

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def generate_reply(model: str, messages: Sequence[dict[str, Any]], max_tokens: int | None) -> Reply:
    """Generate the reply for a conversation; the same input always gives the same reply."""
    seed_source = json.dumps([model, [[m.get("role"), message_text(m)] for m in messages]])
    rng = random.Random(hashlib.sha256(seed_source.encode()).digest())
    topic = _topic(messages)

    sentences = [rng.choice(_OPENERS)]
    for template in rng.sample(_TEMPLATES, rng.randint(2, 4)):
        sentence = template.format(
            topic=topic, noun=rng.choice(_NOUNS), adj=rng.choice(_ADJECTIVES), verb=rng.choice(_VERBS)
        )
        sentences.append(sentence[0].upper() + sentence[1:])

    pieces: list[str] = []
    for token in tokenize(" ".join(sentences)):
        # Words after the first get a leading space, the way BPE tokens carry it; punctuation does not.
        pieces.append(token if not pieces or not token[0].isalnum() else " " + token)

    if max_tokens is not None and len(pieces) > max_tokens:
        return Reply(pieces[:max_tokens], "length")
    return Reply(pieces, "stop")
