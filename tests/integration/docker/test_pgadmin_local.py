"""pgAdmin on the local runtime, against a real PostgreSQL server.

Installing pgadmin4 takes minutes and about 600 MB, so this runs only when HOMUNCULY_NB_PGADMIN_VENV
names a virtual environment that already has it (`python -m venv V && V/bin/pip install pgadmin4`).
"""

from __future__ import annotations

import os
import sqlite3

import httpx
import pytest

from homunculy_nb.pgadmin import add_pgadmin
from homunculy_nb.stack import Stack

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.environ.get("HOMUNCULY_NB_PGADMIN_VENV"),
                       reason="set HOMUNCULY_NB_PGADMIN_VENV to a virtual environment with pgadmin4"),
]


@pytest.fixture(autouse=True)
def secrets_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(tmp_path / "secrets.json"))


def test_local_pgadmin_lists_servers_without_login(tmp_path):
    stack = Stack("pga-local", state_dir=tmp_path / "state", source_dir=tmp_path, runtime="local")
    password = stack.add_parameter("pg-password", secret=True, value="pgadmin-test-pw")
    server = stack.add_postgres("pga-postgres", port=None, password=password)
    server.add_database("orders")
    pgadmin = add_pgadmin(stack, port=None)
    try:
        stack.up(timeout=120)
        assert stack.status().set_index("name").loc["pgadmin", "state"] == "NotStarted"

        stack.start("pgadmin", timeout=300)

        url = pgadmin.url()
        assert httpx.get(f"{url}/misc/ping", timeout=10).text == "PING"
        browser = httpx.get(f"{url}/browser/", timeout=30)
        assert browser.status_code == 200
        assert "login" not in str(browser.url)

        database = tmp_path / "state" / "pgadmin" / "data" / "pgadmin4.db"
        with sqlite3.connect(database) as connection:
            rows = connection.execute("SELECT name, host, port, username FROM server").fetchall()
        assert rows == [("pga-postgres", "127.0.0.1", server.endpoints["tcp"].allocated.port, "postgres")]

        pgpass_file = tmp_path / "state" / "pgadmin" / "data" / "pgpass"
        assert oct(pgpass_file.stat().st_mode & 0o777) == "0o600"
        assert "pgadmin-test-pw" not in stack.logs("pgadmin")["line"].str.cat(sep="\n")
    finally:
        stack.down(timeout=5)
