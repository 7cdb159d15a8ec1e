"""SQL of the management service: users, quotas, agents, assignments and usage."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from homunculy_nb.services.management.quotas import TIERS, QuotaExceeded, next_utc_midnight, today_utc

AGENT_FIELDS = ("name", "description", "provider", "model_name", "system_prompt", "temperature",
                "max_tokens", "personality")


class Conflict(Exception):
    """Raised when a change would break a uniqueness or allocation rule."""


class Forbidden(Exception):
    """Raised when the user's quota or assignments do not allow the request."""


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = float(value)
        elif value is not None and not isinstance(value, (str, int, float, bool, dict, list)):
            value = str(value)
        out[key] = value
    return out


class ManagementStore:
    """Runs each operation on its own connection to the `management` database."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    async def connect(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(self._conninfo, row_factory=dict_row)

    async def check(self) -> None:
        """Raise `psycopg` errors unless the database responds and has the `users` table."""
        async with await self.connect() as conn:
            await conn.execute("SELECT 1 FROM users LIMIT 1")

    # Users

    async def create_user(self, email: str, name: str, tier: str) -> dict[str, Any]:
        limits = TIERS[tier]
        async with await self.connect() as conn:
            try:
                async with conn.transaction():
                    cursor = await conn.execute(
                        "INSERT INTO users (email, name, subscription_tier) VALUES (%s, %s, %s) "
                        "RETURNING id, email, name, subscription_tier, is_active, created_at",
                        (email, name, tier),
                    )
                    user = await cursor.fetchone()
                    await conn.execute(
                        "INSERT INTO user_quotas (user_id, tier, max_agents, max_tokens_per_day, "
                        "max_requests_per_day, max_requests_per_minute, reset_date) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        (user["id"], tier, limits.max_agents, limits.max_tokens_per_day,
                         limits.max_requests_per_day, limits.max_requests_per_minute, today_utc()),
                    )
            except psycopg.errors.UniqueViolation as exc:
                raise Conflict(f"A user with email {email!r} already exists.") from exc
        return _jsonable(user)

    async def get_user(self, user_id: str) -> dict[str, Any] | None:
        async with await self.connect() as conn:
            cursor = await conn.execute(
                "SELECT u.id, u.email, u.name, u.subscription_tier, u.is_active, u.created_at, "
                "q.max_agents, q.max_tokens_per_day, q.max_requests_per_day, q.max_requests_per_minute, "
                "q.used_tokens_today, q.used_requests_today, q.reset_date "
                "FROM users u JOIN user_quotas q ON q.user_id = u.id WHERE u.id = %s",
                (user_id,),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            cursor = await conn.execute(
                "SELECT count(*) AS requests, coalesce(sum(tokens_used), 0) AS tokens, "
                "coalesce(sum(cost), 0) AS cost FROM usage_metrics WHERE user_id = %s",
                (user_id,),
            )
            usage = await cursor.fetchone()
        quota_keys = ("max_agents", "max_tokens_per_day", "max_requests_per_day", "max_requests_per_minute",
                      "used_tokens_today", "used_requests_today", "reset_date")
        user = _jsonable({key: value for key, value in row.items() if key not in quota_keys})
        user["quota"] = _jsonable({key: row[key] for key in quota_keys})
        user["usage"] = _jsonable(dict(usage))
        return user

    # Agents

    async def create_agent(self, fields: dict[str, Any]) -> dict[str, Any]:
        columns = [key for key in AGENT_FIELDS if fields.get(key) is not None]
        values = [json.dumps(fields[key]) if key == "personality" else fields[key] for key in columns]
        async with await self.connect() as conn:
            cursor = await conn.execute(
                f"INSERT INTO agents ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) RETURNING *",
                values,
            )
            return _jsonable(await cursor.fetchone())

    async def list_agents(self) -> list[dict[str, Any]]:
        async with await self.connect() as conn:
            cursor = await conn.execute("SELECT * FROM agents ORDER BY created_at, id")
            return [_jsonable(row) for row in await cursor.fetchall()]

    async def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        async with await self.connect() as conn:
            cursor = await conn.execute("SELECT * FROM agents WHERE id = %s", (agent_id,))
            row = await cursor.fetchone()
        return _jsonable(row) if row else None

    async def update_agent(self, agent_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        columns = [key for key in (*AGENT_FIELDS, "is_active") if key in fields]
        values = [json.dumps(fields[key]) if key == "personality" else fields[key] for key in columns]
        assignments = ", ".join([f"{column} = %s" for column in columns] + ["updated_at = now()"])
        async with await self.connect() as conn:
            cursor = await conn.execute(
                f"UPDATE agents SET {assignments} WHERE id = %s RETURNING *", [*values, agent_id]
            )
            row = await cursor.fetchone()
        return _jsonable(row) if row else None

    async def delete_agent(self, agent_id: str) -> bool:
        async with await self.connect() as conn:
            cursor = await conn.execute("DELETE FROM agents WHERE id = %s", (agent_id,))
            return cursor.rowcount > 0

    # Assignments

    async def assign(self, user_id: str, agent_id: str, strategy: str, priority: int,
                     max_concurrent_requests: int) -> dict[str, Any]:
        """Assign an agent to a user; raises `Conflict` or `Forbidden` when the rules do not allow it."""
        async with await self.connect() as conn:
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT max_agents FROM user_quotas WHERE user_id = %s FOR UPDATE", (user_id,)
                )
                quota = await cursor.fetchone()
                cursor = await conn.execute(
                    "SELECT user_id, allocation_strategy FROM agent_assignments WHERE agent_id = %s FOR UPDATE",
                    (agent_id,),
                )
                others = [row for row in await cursor.fetchall() if str(row["user_id"]) != user_id]
                cursor = await conn.execute(
                    "SELECT count(*) AS n FROM agent_assignments WHERE user_id = %s", (user_id,)
                )
                assigned = (await cursor.fetchone())["n"]

                if assigned >= quota["max_agents"]:
                    raise Forbidden(f"The user's tier allows {quota['max_agents']} agent(s), and {assigned} "
                                    "are assigned. Remove an assignment or upgrade the tier.")
                if strategy == "dedicated" and others:
                    raise Conflict(f"Agent {agent_id} is already assigned to another user, so it cannot be "
                                   "dedicated. Use the shared or pool strategy.")
                if any(row["allocation_strategy"] == "dedicated" for row in others):
                    raise Conflict(f"Agent {agent_id} is dedicated to another user.")
                try:
                    cursor = await conn.execute(
                        "INSERT INTO agent_assignments (user_id, agent_id, allocation_strategy, priority, "
                        "max_concurrent_requests) VALUES (%s, %s, %s, %s, %s) RETURNING *",
                        (user_id, agent_id, strategy, priority, max_concurrent_requests),
                    )
                except psycopg.errors.UniqueViolation as exc:
                    raise Conflict(f"Agent {agent_id} is already assigned to user {user_id}.") from exc
                return _jsonable(await cursor.fetchone())

    async def list_assignments(self, user_id: str) -> list[dict[str, Any]]:
        async with await self.connect() as conn:
            cursor = await conn.execute(
                "SELECT * FROM agent_assignments WHERE user_id = %s ORDER BY priority DESC, created_at",
                (user_id,),
            )
            return [_jsonable(row) for row in await cursor.fetchall()]

    async def unassign(self, user_id: str, agent_id: str) -> bool:
        async with await self.connect() as conn:
            cursor = await conn.execute(
                "DELETE FROM agent_assignments WHERE user_id = %s AND agent_id = %s", (user_id, agent_id)
            )
            return cursor.rowcount > 0

    async def choose_agent(self, user_id: str, agent_id: str | None) -> tuple[dict[str, Any] | None, int]:
        """Return the agent a chat uses and its concurrency limit.

        With `agent_id` it is that agent, which must be assigned when the user has any assignment.
        Without it, the assigned active agent of highest priority is chosen, and among equals the least
        recently used one, so a pool rotates.
        """
        async with await self.connect() as conn:
            cursor = await conn.execute(
                "SELECT a.*, s.max_concurrent_requests, "
                "(SELECT max(recorded_at) FROM usage_metrics m WHERE m.user_id = s.user_id AND m.agent_id = a.id) "
                "AS last_used FROM agent_assignments s JOIN agents a ON a.id = s.agent_id "
                "WHERE s.user_id = %s AND a.is_active "
                "ORDER BY s.priority DESC, last_used ASC NULLS FIRST, s.created_at",
                (user_id,),
            )
            assigned = await cursor.fetchall()
            if agent_id is None:
                return (assigned[0], assigned[0]["max_concurrent_requests"]) if assigned else (None, 0)

            for row in assigned:
                if str(row["id"]) == agent_id:
                    return row, row["max_concurrent_requests"]
            if assigned:
                raise Forbidden(f"Agent {agent_id} is not assigned to user {user_id}, or it is inactive.")
            cursor = await conn.execute("SELECT * FROM agents WHERE id = %s AND is_active", (agent_id,))
            row = await cursor.fetchone()
            if row is None:
                raise Forbidden(f"Agent {agent_id} does not exist or is inactive.")
            return row, 0

    # Quota and usage

    async def admit(self, user_id: str, agent_id: str | None) -> tuple[int, dict[str, Any]] | QuotaExceeded | None:
        """Check the user's limits and count the request; return (usage row id, quota), the exceeded limit,
        or None when the user does not exist.

        The quota row is locked for the check, so concurrent requests cannot both take the last slot.
        """
        now = datetime.now(timezone.utc)
        async with await self.connect() as conn:
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT q.*, u.is_active FROM user_quotas q JOIN users u ON u.id = q.user_id "
                    "WHERE q.user_id = %s FOR UPDATE OF q",
                    (user_id,),
                )
                quota = await cursor.fetchone()
                if quota is None:
                    return None
                if not quota["is_active"]:
                    raise Forbidden(f"User {user_id} is deactivated.")

                if quota["reset_date"] < now.date():
                    await conn.execute(
                        "UPDATE user_quotas SET used_tokens_today = 0, used_requests_today = 0, reset_date = %s "
                        "WHERE user_id = %s",
                        (now.date(), user_id),
                    )
                    quota["used_tokens_today"] = quota["used_requests_today"] = 0

                cursor = await conn.execute(
                    "SELECT count(*) AS n, min(recorded_at) AS oldest FROM usage_metrics "
                    "WHERE user_id = %s AND recorded_at > %s",
                    (user_id, now - timedelta(minutes=1)),
                )
                window = await cursor.fetchone()
                midnight = next_utc_midnight(now)
                if window["n"] >= quota["max_requests_per_minute"]:
                    return QuotaExceeded("requests_per_minute", quota["max_requests_per_minute"], window["n"],
                                         (window["oldest"] or now) + timedelta(minutes=1))
                if quota["used_requests_today"] >= quota["max_requests_per_day"]:
                    return QuotaExceeded("requests_per_day", quota["max_requests_per_day"],
                                         quota["used_requests_today"], midnight)
                if quota["used_tokens_today"] >= quota["max_tokens_per_day"]:
                    return QuotaExceeded("tokens_per_day", quota["max_tokens_per_day"],
                                         quota["used_tokens_today"], midnight)

                cursor = await conn.execute(
                    "INSERT INTO usage_metrics (user_id, agent_id, recorded_at) VALUES (%s, %s, %s) RETURNING id",
                    (user_id, agent_id, now),
                )
                usage_id = (await cursor.fetchone())["id"]
                await conn.execute(
                    "UPDATE user_quotas SET used_requests_today = used_requests_today + 1, updated_at = now() "
                    "WHERE user_id = %s",
                    (user_id,),
                )
        return usage_id, quota

    async def cancel_usage(self, usage_id: int, user_id: str) -> None:
        """Take back a request that `admit` counted but that was never answered."""
        async with await self.connect() as conn:
            async with conn.transaction():
                cursor = await conn.execute("DELETE FROM usage_metrics WHERE id = %s", (usage_id,))
                if cursor.rowcount:
                    await conn.execute(
                        "UPDATE user_quotas SET used_requests_today = greatest(used_requests_today - 1, 0), "
                        "updated_at = now() WHERE user_id = %s",
                        (user_id,),
                    )

    async def record_usage(self, usage_id: int, user_id: str, tokens: int, cost: Decimal) -> dict[str, Any]:
        """Add a finished request's tokens and cost; return the user's counters for today."""
        async with await self.connect() as conn:
            async with conn.transaction():
                await conn.execute(
                    "UPDATE usage_metrics SET tokens_used = %s, cost = %s WHERE id = %s", (tokens, cost, usage_id)
                )
                cursor = await conn.execute(
                    "UPDATE user_quotas SET used_tokens_today = used_tokens_today + %s, updated_at = now() "
                    "WHERE user_id = %s RETURNING used_tokens_today, used_requests_today",
                    (tokens, user_id),
                )
                return dict(await cursor.fetchone())
