"""Conversation storage: sessions per user and their messages, in PostgreSQL or in memory.

PostgreSQL is used when `DB_*` or `DATABASE_URI` is set; its tables come from the service's changelog.
The in-memory store, used when no database is configured, loses everything when the process exits.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from typing import Any

import psycopg

from homunculy_nb.services._database import describe

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 20
CHANGELOG_HINT = (
    "Apply homunculy_nb/services/agent/changelog/changelog.xml first, "
    "e.g. `DATABASE_URI=... python -m homunculy_nb.migrations homunculy_nb/services/agent/changelog/changelog.xml`."
)


class StoreError(Exception):
    """Raised when the conversation database is unreachable or lacks the service's tables."""


class PostgresStore:
    """Sessions and messages in the `homunculy` database, one connection per group of statements."""

    storage_type = "postgres"

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo

    def __repr__(self) -> str:
        return f"PostgresStore({describe(self._conninfo)})"

    async def check(self) -> None:
        """Raise `StoreError` unless the database responds and has the `messages` table."""
        try:
            async with await psycopg.AsyncConnection.connect(self._conninfo) as conn:
                await conn.execute("SELECT 1 FROM messages LIMIT 1")
        except psycopg.errors.UndefinedTable as exc:
            raise StoreError(f"The database {describe(self._conninfo)} has no `messages` table. {CHANGELOG_HINT}") from exc
        except psycopg.OperationalError as exc:
            raise StoreError(f"Cannot connect to PostgreSQL at {describe(self._conninfo)}: {exc}") from exc

    async def begin_turn(self, user_id: str, message: str, tokens: int, context: dict[str, Any],
                         mood: str) -> tuple[str, list[dict[str, str]]]:
        """Store the user's message and return (thread_id, the history before it)."""
        async with await psycopg.AsyncConnection.connect(self._conninfo) as conn:
            async with conn.transaction():
                cursor = await conn.execute(
                    "INSERT INTO sessions (user_id) VALUES (%s) "
                    "ON CONFLICT (user_id, agent_id) DO UPDATE SET updated_at = now() RETURNING id",
                    (user_id,),
                )
                thread_id = (await cursor.fetchone())[0]

                cursor = await conn.execute(
                    "SELECT role, content FROM (SELECT role, content, created_at, id FROM messages "
                    "WHERE session_id = %s ORDER BY created_at DESC, id DESC LIMIT %s) AS recent "
                    "ORDER BY created_at, id",
                    (thread_id, HISTORY_LIMIT),
                )
                history = [{"role": role, "content": content} for role, content in await cursor.fetchall()]

                await conn.execute(
                    "INSERT INTO messages (session_id, role, content, tokens) VALUES (%s, 'user', %s, %s)",
                    (thread_id, message, tokens),
                )
                if context:
                    await conn.execute(
                        "INSERT INTO session_context (session_id, data) VALUES (%s, %s::jsonb) "
                        "ON CONFLICT (session_id) DO UPDATE SET data = EXCLUDED.data, updated_at = now()",
                        (thread_id, json.dumps(context, default=str)),
                    )
                await conn.execute(
                    "INSERT INTO emotional_states (session_id, mood) SELECT %s, %s WHERE %s IS DISTINCT FROM "
                    "(SELECT mood FROM emotional_states WHERE session_id = %s ORDER BY recorded_at DESC, id DESC LIMIT 1)",
                    (thread_id, mood, mood, thread_id),
                )
        return str(thread_id), history

    async def finish_turn(self, thread_id: str, reply: str, tokens: int, model: str) -> None:
        """Store the assistant's reply."""
        async with await psycopg.AsyncConnection.connect(self._conninfo) as conn:
            await conn.execute(
                "INSERT INTO messages (session_id, role, content, tokens, model) VALUES (%s, 'assistant', %s, %s, %s)",
                (thread_id, reply, tokens, model),
            )


class MemoryStore:
    """Sessions and messages in this process only."""

    storage_type = "memory"

    def __init__(self) -> None:
        self._threads: dict[str, str] = {}
        self._messages: dict[str, list[dict[str, str]]] = defaultdict(list)

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._threads)} sessions)"

    async def check(self) -> None:
        return None

    async def begin_turn(self, user_id: str, message: str, tokens: int, context: dict[str, Any],
                         mood: str) -> tuple[str, list[dict[str, str]]]:
        thread_id = self._threads.setdefault(user_id, str(uuid.uuid4()))
        history = list(self._messages[thread_id][-HISTORY_LIMIT:])
        self._messages[thread_id].append({"role": "user", "content": message})
        return thread_id, history

    async def finish_turn(self, thread_id: str, reply: str, tokens: int, model: str) -> None:
        self._messages[thread_id].append({"role": "assistant", "content": reply})


def open_store(conninfo: str | None) -> PostgresStore | MemoryStore:
    """Return the PostgreSQL store when a database is configured, else the in-memory one."""
    if conninfo:
        return PostgresStore(conninfo)
    logger.warning("No DB_HOST or DATABASE_URI is set; conversations are kept in memory only")
    return MemoryStore()
