"""Changelogs applied by homunculy_nb.migrations to a real PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from homunculy_nb.errors import MigrationError
from homunculy_nb.migrations import apply_changelog

pytestmark = pytest.mark.integration


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def query(uri: str, sql: str) -> list[tuple]:
    with psycopg.connect(uri) as connection:
        return connection.execute(sql).fetchall()


@pytest.fixture
def master(tmp_path: Path) -> Path:
    """A master XML changelog including one formatted SQL file and a folder through includeAll."""
    write(tmp_path / "db" / "changelog.xml", """
        <?xml version="1.0" encoding="UTF-8"?>
        <databaseChangeLog
            xmlns="http://www.liquibase.org/xml/ns/dbchangelog"
            xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
            xsi:schemaLocation="http://www.liquibase.org/xml/ns/dbchangelog
                http://www.liquibase.org/xml/ns/dbchangelog/dbchangelog-4.20.xsd">
            <include file="changes/001-tables.sql" relativeToChangelogFile="true"/>
            <includeAll path="changes/more/" relativeToChangelogFile="true"/>
        </databaseChangeLog>
    """)
    write(tmp_path / "db" / "changes" / "001-tables.sql", """
        --liquibase formatted sql

        --changeset alice:1
        --comment: the users table
        CREATE TABLE users (id serial PRIMARY KEY, name text NOT NULL);
        INSERT INTO users (name) VALUES ('semi;colon'), ('it''s');
        --rollback DROP TABLE users;

        --changeset alice:2 splitStatements:false
        CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.name := trim(NEW.name);  -- statements inside the body end with ;
            RETURN NEW;
        END;
        $$;
        CREATE TRIGGER users_touch BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION touch();
    """)
    write(tmp_path / "db" / "changes" / "more" / "b-second.sql", """
        --liquibase formatted sql
        --changeset bob:b
        INSERT INTO steps VALUES ('b');
    """)
    write(tmp_path / "db" / "changes" / "more" / "a-first.sql", """
        --liquibase formatted sql
        --changeset bob:a
        CREATE TABLE steps (name text);
        INSERT INTO steps VALUES ('a');
    """)
    return tmp_path / "db" / "changelog.xml"


def test_master_changelog_applies_every_change_set(master, database_uri):
    results = apply_changelog(master, database_uri)

    assert [(r.filename, r.id, r.exec_type) for r in results] == [
        ("changes/001-tables.sql", "1", "EXECUTED"),
        ("changes/001-tables.sql", "2", "EXECUTED"),
        ("changes/more/a-first.sql", "a", "EXECUTED"),
        ("changes/more/b-second.sql", "b", "EXECUTED"),
    ]
    assert query(database_uri, "SELECT name FROM users ORDER BY id") == [("semi;colon",), ("it's",)]


def test_include_all_runs_files_in_alphabetical_order(master, database_uri):
    apply_changelog(master, database_uri)

    assert query(database_uri, "SELECT name FROM steps") == [("a",), ("b",)]


def test_plpgsql_body_survives_split_statements_false(master, database_uri):
    apply_changelog(master, database_uri)

    with psycopg.connect(database_uri) as connection:
        connection.execute("INSERT INTO users (name) VALUES ('  padded  ')")
        names = [row[0] for row in connection.execute("SELECT name FROM users ORDER BY id")]
    assert names[-1] == "padded"


def test_second_run_applies_nothing(master, database_uri):
    apply_changelog(master, database_uri)

    again = apply_changelog(master, database_uri)

    assert {r.exec_type for r in again} == {"SKIPPED"}
    assert query(database_uri, "SELECT count(*) FROM steps") == [(2,)]


def test_changelog_table_records_liquibase_columns(master, database_uri):
    apply_changelog(master, database_uri)

    rows = query(
        database_uri,
        "SELECT id, author, filename, orderexecuted, exectype, length(md5sum), comments "
        "FROM databasechangelog ORDER BY orderexecuted",
    )
    assert rows[0] == ("1", "alice", "changes/001-tables.sql", 1, "EXECUTED", 32, "the users table")
    assert [row[3] for row in rows] == [1, 2, 3, 4]
    columns = [row[0] for row in query(
        database_uri,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'databasechangelog' "
        "ORDER BY ordinal_position",
    )]
    assert columns == ["id", "author", "filename", "dateexecuted", "orderexecuted", "exectype", "md5sum",
                       "description", "comments", "tag", "liquibase", "contexts", "labels", "deployment_id"]


def test_changed_change_set_is_rejected_naming_file_and_id(master, database_uri):
    apply_changelog(master, database_uri)
    edited = master.parent / "changes" / "more" / "a-first.sql"
    edited.write_text(edited.read_text().replace("VALUES ('a')", "VALUES ('A')"))

    with pytest.raises(MigrationError) as caught:
        apply_changelog(master, database_uri)

    assert "`a` by `bob` in changes/more/a-first.sql" in str(caught.value)


def test_run_on_change_reruns_an_edited_change_set(tmp_path, database_uri):
    changelog = write(tmp_path / "view.sql", """
        --liquibase formatted sql
        --changeset carol:view runOnChange:true
        CREATE OR REPLACE VIEW answer AS SELECT 41 AS value;
    """)
    apply_changelog(changelog, database_uri)
    changelog.write_text(changelog.read_text().replace("41", "42"))

    results = apply_changelog(changelog, database_uri)

    assert results[0].exec_type == "RERAN"
    assert query(database_uri, "SELECT value FROM answer") == [(42,)]


def test_failing_change_set_rolls_back_and_names_itself(tmp_path, database_uri):
    changelog = write(tmp_path / "broken.sql", """
        --liquibase formatted sql
        --changeset dave:ok
        CREATE TABLE kept (id int);
        --changeset dave:bad
        CREATE TABLE half (id int);
        SELECT * FROM no_such_table;
    """)

    with pytest.raises(MigrationError, match=r"`bad` by `dave` in broken.sql .*no_such_table"):
        apply_changelog(changelog, database_uri)

    tables = {row[0] for row in query(database_uri, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert "kept" in tables
    assert "half" not in tables
    assert query(database_uri, "SELECT id FROM databasechangelog") == [("ok",)]


def test_folder_of_plain_sql_files_runs_each_file_once(tmp_path, database_uri):
    folder = tmp_path / "sql"
    write(folder / "002_data.sql", "INSERT INTO items VALUES (1); INSERT INTO items VALUES (2);\n")
    write(folder / "001_schema.sql", "CREATE TABLE items (id int);\n")

    first = apply_changelog(folder, database_uri)
    second = apply_changelog(folder, database_uri)

    assert [(r.filename, r.exec_type) for r in first] == [("001_schema.sql", "EXECUTED"), ("002_data.sql", "EXECUTED")]
    assert [r.exec_type for r in second] == ["SKIPPED", "SKIPPED"]
    assert query(database_uri, "SELECT count(*) FROM items") == [(2,)]


def test_contexts_select_change_sets(tmp_path, database_uri):
    changelog = write(tmp_path / "contexts.sql", """
        --liquibase formatted sql
        --changeset erin:schema
        CREATE TABLE seeds (name text);
        --changeset erin:dev-data context:dev
        INSERT INTO seeds VALUES ('dev');
        --changeset erin:prod-data context:prod
        INSERT INTO seeds VALUES ('prod');
    """)

    results = apply_changelog(changelog, database_uri, contexts=["dev"])

    assert [r.exec_type for r in results] == ["EXECUTED", "EXECUTED", "SKIPPED"]
    assert query(database_uri, "SELECT name FROM seeds") == [("dev",)]


def _cli(args: list[str], uri: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URI"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if uri is not None:
        env["DATABASE_URI"] = uri
    return subprocess.run(
        [sys.executable, "-m", "homunculy_nb.migrations", *args], env=env, capture_output=True, text=True,
        timeout=120,
    )


def test_cli_prints_one_line_per_change_set_and_exits_zero(master, database_uri):
    first = _cli([str(master)], database_uri)
    second = _cli([str(master)], database_uri)

    assert first.returncode == 0, first.stderr
    assert [line.split()[0] for line in first.stdout.splitlines()[:4]] == ["EXECUTED"] * 4
    assert second.returncode == 0, second.stderr
    assert [line.split()[0] for line in second.stdout.splitlines()[:4]] == ["SKIPPED"] * 4


def test_cli_exits_non_zero_on_a_changed_change_set(master, database_uri):
    assert _cli([str(master)], database_uri).returncode == 0
    edited = master.parent / "changes" / "001-tables.sql"
    edited.write_text(edited.read_text().replace("'semi;colon'", "'changed'"))

    result = _cli([str(master)], database_uri)

    assert result.returncode == 1
    assert "`1` by `alice` in changes/001-tables.sql" in result.stderr


def test_cli_never_prints_the_password(tmp_path, database_uri):
    wrong = database_uri.replace("battery", "batteries")

    result = _cli([str(write(tmp_path / "x.sql", "SELECT 1;\n"))], wrong)

    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert "batteries" not in result.stderr + result.stdout


def test_cli_without_database_uri_exits_two(tmp_path):
    result = _cli([str(write(tmp_path / "x.sql", "SELECT 1;\n"))], None)

    assert result.returncode == 2
    assert "DATABASE_URI" in result.stderr


def test_concurrent_runners_apply_each_change_set_once(master, database_uri):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(lambda _: apply_changelog(master, database_uri), range(3)))

    executed = [r.label for run in runs for r in run if r.exec_type == "EXECUTED"]
    assert len(executed) == 4
    assert len(set(executed)) == 4
    assert query(database_uri, "SELECT count(*) FROM steps") == [(2,)]


def test_lock_timeout_names_the_holding_session(tmp_path, database_uri):
    from homunculy_nb.migrations import LOCK_KEY

    changelog = write(tmp_path / "x.sql", "--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n")
    with psycopg.connect(database_uri, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        holder_pid = holder.info.backend_pid

        with pytest.raises(MigrationError, match=f"held by the session with backend pid {holder_pid}"):
            apply_changelog(changelog, database_uri, lock_timeout=0.5)


def test_percent_signs_and_rollback_blocks(tmp_path, database_uri):
    changelog = write(tmp_path / "percent.sql", """
        --liquibase formatted sql
        --changeset fay:1
        CREATE TABLE rates (label text);
        INSERT INTO rates VALUES ('100%'), ('%s');
        /* liquibase rollback
        DROP TABLE rates;
        */
    """)

    apply_changelog(changelog, database_uri)

    assert query(database_uri, "SELECT label FROM rates") == [("100%",), ("%s",)]


def test_preconditions_mark_ran_continue_and_pass(tmp_path, database_uri):
    changelog = write(tmp_path / "pre.sql", """
        --liquibase formatted sql
        --changeset gil:exists
        CREATE TABLE present (id int);

        --changeset gil:mark-ran
        --preconditions onFail:MARK_RAN
        --precondition-sql-check expectedResult:0 SELECT count(*) FROM pg_tables WHERE tablename = 'present'
        CREATE TABLE present (id int);

        --changeset gil:later
        --preconditions onFail:CONTINUE
        --precondition-table-exists table:later_input schema:public
        INSERT INTO later_input VALUES (1);

        --changeset gil:passes
        --preconditions onFail:HALT
        --precondition-table-exists table:present
        INSERT INTO present VALUES (7);
    """)

    results = apply_changelog(changelog, database_uri)

    assert [r.exec_type for r in results] == ["EXECUTED", "MARK_RAN", "SKIPPED", "EXECUTED"]
    assert query(database_uri, "SELECT id, exectype FROM databasechangelog ORDER BY orderexecuted") == [
        ("exists", "EXECUTED"), ("mark-ran", "MARK_RAN"), ("passes", "EXECUTED"),
    ]
    with psycopg.connect(database_uri, autocommit=True) as connection:
        connection.execute("CREATE TABLE later_input (id int)")
    assert [r.exec_type for r in apply_changelog(changelog, database_uri)] == [
        "SKIPPED", "SKIPPED", "EXECUTED", "SKIPPED",
    ]


def test_failed_precondition_halts_by_default(tmp_path, database_uri):
    changelog = write(tmp_path / "halt.sql", """
        --liquibase formatted sql
        --changeset hal:1
        --precondition-sql-check expectedResult:1 SELECT 0
        CREATE TABLE never (id int);
    """)

    with pytest.raises(MigrationError, match=r"precondition `sql-check expectedResult:1 SELECT 0` of the change set `1`"):
        apply_changelog(changelog, database_uri)
    assert query(database_uri, "SELECT to_regclass('never') IS NULL") == [(True,)]
