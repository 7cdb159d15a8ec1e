"""Stacks with real PostgreSQL servers: data across down()/up(), migrations, the example stack, root."""

from __future__ import annotations

import os
import sys

import httpx
import psutil
import psycopg
import pytest

from homunculy_nb.cli import load_stack_file

pytestmark = pytest.mark.integration


def test_data_kept_across_down_and_up(make_stack):
    stack = make_stack("persist")
    server = stack.add_postgres("db").with_data_volume()
    database = server.add_database("app")

    stack.up(timeout=120)
    with psycopg.connect(database.connection_string.reveal()) as connection:
        connection.execute("CREATE TABLE note (body text)")
        connection.execute("INSERT INTO note VALUES ('kept')")
    stack.down()
    stack.up(timeout=120)

    with psycopg.connect(database.connection_string.reveal()) as connection:
        rows = connection.execute("SELECT body FROM note").fetchall()
    assert rows == [("kept",)]
    assert (stack.state_dir / "volumes" / "db-data").is_dir()


def test_data_removed_without_volume(make_stack):
    stack = make_stack("ephemeral")
    server = stack.add_postgres("db")
    database = server.add_database("app")

    stack.up(timeout=120)
    with psycopg.connect(database.connection_string.reveal()) as connection:
        connection.execute("CREATE TABLE note (body text)")
    stack.down()
    stack.up(timeout=120)

    with psycopg.connect(database.connection_string.reveal()) as connection:
        exists = connection.execute("SELECT to_regclass('note') IS NOT NULL").fetchone()[0]
    assert exists is False


def test_reference_env_reaches_child_and_connects(make_stack, tmp_path):
    stack = make_stack("refs")
    password = stack.add_parameter("db-password", secret=True, value="Pw-with@chars/1")
    server = stack.add_postgres("db", password=password)
    database = server.add_database("shop")
    output = tmp_path / "result.txt"
    code = (
        "import os, psycopg, sys\n"
        "uri = os.environ['ConnectionStrings__shop']\n"
        "assert uri == os.environ['SHOP_URI']\n"
        "kw = dict(host=os.environ['SHOP_HOST'], port=os.environ['SHOP_PORT'], user=os.environ['SHOP_USERNAME'],"
        " password=os.environ['SHOP_PASSWORD'], dbname=os.environ['SHOP_DATABASENAME'])\n"
        "a = psycopg.connect(uri).execute('select current_database(), current_user').fetchone()\n"
        "b = psycopg.connect(**kw).execute('select current_database()').fetchone()\n"
        "open(sys.argv[1], 'w').write(f'{a[0]} {a[1]} {b[0]}')\n"
    )
    job = stack.add_executable("client", sys.executable, ["-c", code, str(output)]).with_reference(database).wait_for(database)
    stack.add_executable("after", "true").wait_for_completion(job)

    stack.up(timeout=120)

    assert output.read_text() == "shop postgres shop"
    assert "Pw-with@chars/1" not in stack.logs().to_string()


def test_migrations_gate_dependents(make_stack, tmp_path):
    changelog = tmp_path / "changelog"
    changelog.mkdir()
    (changelog / "001-table.sql").write_text("CREATE TABLE item (id int PRIMARY KEY);\n")
    stack = make_stack("migrate")
    database = stack.add_postgres("db").add_database("app")
    migrations = stack.add_migrations("app-migrations", changelog, database)
    check = "import os, psycopg; psycopg.connect(os.environ['APP_URI']).execute('select count(*) from item')"
    job = stack.add_executable("reader", sys.executable, ["-c", check]).with_reference(database)
    job.wait_for_completion(migrations)
    stack.add_executable("after", "true").wait_for_completion(job)

    stack.up(timeout=120)

    status = stack.status().set_index("name")
    assert status.loc["app-migrations", "state"] == "Finished"
    assert status.loc["reader", "exit_code"] == 0
    assert any("001-table.sql" in line for line in stack.logs("app-migrations").line)


def test_failed_migration_blocks_app(make_stack, tmp_path):
    changelog = tmp_path / "changelog"
    changelog.mkdir()
    (changelog / "001-broken.sql").write_text("CREATE TABLE broken (;\n")
    stack = make_stack("badmigrate")
    database = stack.add_postgres("db").add_database("app")
    migrations = stack.add_migrations("app-migrations", changelog, database)
    stack.add_executable("web", "sleep", ["30"]).wait_for_completion(migrations)

    with pytest.raises(Exception) as raised:
        stack.up(timeout=120)

    assert "`app-migrations` exited" in str(raised.value)
    assert "001-broken.sql" in str(raised.value)
    assert stack.status().set_index("name").loc["web", "state"] == "NotStarted"


def test_example_stack_end_to_end(state_root):
    from pathlib import Path

    example = Path(__file__).resolve().parents[3] / "examples" / "two_databases.py"
    stack = load_stack_file(example)
    stack.state_dir = state_root / "example-state"
    try:
        stack.up(timeout=180)
        body = httpx.get(stack["catalog-app"].url() + "/", trust_env=False).json()
    finally:
        stack.down(volumes=True)

    assert body["products"] == [{"sku": "A-1", "name": "Anvil"}, {"sku": "B-2", "name": "Bucket"}]
    assert body["orders"] == [{"id": 1, "sku": "A-1", "quantity": 2}]


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the behaviour when the caller is root")
def test_postgres_as_root_runs_unprivileged(make_stack):
    stack = make_stack("root")
    stack.add_postgres("db").add_database("app")

    stack.up(timeout=120)

    pid = int(stack.status().set_index("name").loc["db", "pid"])
    assert psutil.Process(pid).uids().effective != 0
    assert stack.status().set_index("name").loc["app", "state"] == "Healthy"


def test_restart_server_keeps_port_and_databases(make_stack):
    stack = make_stack("restart")
    server = stack.add_postgres("db").with_data_volume()
    database = server.add_database("app")
    stack.up(timeout=120)
    port = server.port.value

    stack.restart("db")

    status = stack.status().set_index("name")
    assert server.port.value == port
    assert status.loc["db", "restarts"] == 1
    assert status.loc["app", "state"] == "Healthy"
    with psycopg.connect(database.connection_string.reveal()) as connection:
        assert connection.execute("SELECT current_database()").fetchone() == ("app",)
