"""PostgreSQL connection settings shared by the reference services."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

from psycopg.conninfo import make_conninfo


def conninfo_from_env() -> str | None:
    """Build a libpq connection string from `DATABASE_URI` or the `DB_*` variables.

    Returns None when neither is set. A SQLAlchemy-style scheme such as `postgresql+asyncpg://` is
    accepted and reduced to `postgresql://`.
    """
    uri = os.environ.get("DATABASE_URI", "").strip()
    if uri:
        return re.sub(r"^postgres(ql)?\+\w+://", "postgresql://", uri)

    host = os.environ.get("DB_HOST", "").strip()
    if not host:
        return None

    params = {
        "host": host,
        "port": os.environ.get("DB_PORT", "5432"),
        "dbname": os.environ.get("DB_NAME", "postgres"),
        "user": os.environ.get("DB_USER", "postgres"),
        "password": os.environ.get("DB_PASSWORD", ""),
        "connect_timeout": "10",
    }
    ssl_mode = os.environ.get("DB_SSL_MODE", "").strip()
    if ssl_mode:
        params["sslmode"] = ssl_mode
    return make_conninfo(**{key: value for key, value in params.items() if value != ""})


def describe(conninfo: str) -> str:
    """Return `host:port/dbname` of a connection string, without the password, for log lines."""
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(conninfo)
    return f"{parts.get('host', '?')}:{parts.get('port', '5432')}/{quote(str(parts.get('dbname', '?')))}"


def find_nul(value: Any, path: str = "") -> str | None:
    """Return the path of the first string (or object key) in `value` that contains a NUL character."""
    if isinstance(value, str):
        if "\x00" not in value:
            return None
        return path or "value"
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and "\x00" in key:
                return where
            found = find_nul(item, where)
            if found:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found:
                return found
    return None
