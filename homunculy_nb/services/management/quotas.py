"""Subscription tiers, their limits, and the price of tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal


@dataclass(frozen=True)
class TierLimits:
    """The limits a user's quota starts with."""

    max_agents: int
    max_tokens_per_day: int
    max_requests_per_day: int
    max_requests_per_minute: int


TIERS: dict[str, TierLimits] = {
    "free": TierLimits(max_agents=1, max_tokens_per_day=10_000, max_requests_per_day=100,
                       max_requests_per_minute=5),
    "premium": TierLimits(max_agents=5, max_tokens_per_day=200_000, max_requests_per_day=2_000,
                          max_requests_per_minute=30),
    "enterprise": TierLimits(max_agents=100, max_tokens_per_day=5_000_000, max_requests_per_day=50_000,
                             max_requests_per_minute=300),
}

# NOTE: blended input/output prices per 1,000 tokens in USD, estimated from public list prices. The
# execute response reports only total tokens, so input and output cannot be priced apart.
PRICE_PER_1K_TOKENS: dict[str, Decimal] = {
    "gpt-4o-mini": Decimal("0.0004"),
    "gpt-4.1-mini": Decimal("0.0008"),
    "gpt-4o": Decimal("0.006"),
}
DEFAULT_PRICE_PER_1K_TOKENS = Decimal("0.002")


def cost_of(model: str, tokens: int) -> Decimal:
    """Return the estimated cost in USD of `tokens` tokens of `model`."""
    price = PRICE_PER_1K_TOKENS.get(model, DEFAULT_PRICE_PER_1K_TOKENS)
    return (price * tokens / 1000).quantize(Decimal("0.000001"))


def next_utc_midnight(now: datetime) -> datetime:
    """Return when the daily counters reset: the next midnight UTC."""
    return datetime.combine(now.astimezone(timezone.utc).date() + timedelta(days=1), time(), timezone.utc)


def today_utc() -> date:
    return datetime.now(timezone.utc).date()


@dataclass(frozen=True)
class QuotaExceeded:
    """The limit that stopped a request, and the time it allows the next one."""

    limit: str
    maximum: int
    used: int
    resets_at: datetime

    def body(self, now: datetime) -> dict[str, object]:
        retry_after = max(1, int((self.resets_at - now).total_seconds() + 0.999))
        return {
            "error": f"Quota exceeded: {self.limit} is limited to {self.maximum}; "
                     f"try again after {self.resets_at.isoformat()}.",
            "limit": self.limit,
            "max": self.maximum,
            "used": self.used,
            "resets_at": self.resets_at.isoformat(),
            "retry_after_seconds": retry_after,
        }
