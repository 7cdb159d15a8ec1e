"""Changelog parsing and statement splitting, without a database."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from homunculy_nb.errors import MigrationError
from homunculy_nb.migrations import matches_expression, parse_changelog, redact, split_statements


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT 'a;b'; SELECT 2", ["SELECT 'a;b'", "SELECT 2"]),
        ("SELECT 'it''s;'; SELECT 2", ["SELECT 'it''s;'", "SELECT 2"]),
        ("SELECT E'\\';'; SELECT 2", ["SELECT E'\\';'", "SELECT 2"]),
        ('SELECT 1 AS "x;y"; SELECT 2', ['SELECT 1 AS "x;y"', "SELECT 2"]),
        ("SELECT 1; -- a; comment\nSELECT 2;", ["SELECT 1", "-- a; comment\nSELECT 2"]),
        ("SELECT /* a; /* nested; */ b; */ 1; SELECT 2", ["SELECT /* a; /* nested; */ b; */ 1", "SELECT 2"]),
        ("DO $$ BEGIN PERFORM 1; END $$; SELECT 2", ["DO $$ BEGIN PERFORM 1; END $$", "SELECT 2"]),
        ("DO $fn$ BEGIN RAISE NOTICE '$$;'; END $fn$; SELECT 2", ["DO $fn$ BEGIN RAISE NOTICE '$$;'; END $fn$", "SELECT 2"]),
        ("SELECT $1; SELECT 2", ["SELECT $1", "SELECT 2"]),
        ("SELECT 1;\n-- only a comment\n", ["SELECT 1"]),
        ("", []),
    ],
)
def test_split_statements_respects_quotes_and_comments(sql, expected):
    assert split_statements(sql) == expected


def test_split_statements_custom_end_delimiter():
    sql = "CREATE FUNCTION f() RETURNS int AS 'SELECT 1; ' LANGUAGE sql\n/\nSELECT 2 / 1\n/\n"

    assert split_statements(sql, end_delimiter="/") == [
        "CREATE FUNCTION f() RETURNS int AS 'SELECT 1; ' LANGUAGE sql",
        "SELECT 2 / 1",
    ]


def test_formatted_sql_attributes_and_comments_are_parsed(tmp_path):
    changelog = write(tmp_path / "c.sql", """
        --liquibase formatted sql

        --changeset "Jane Doe":init-1 splitStatements:false runOnChange:true context:"dev or test" labels:a,b
        --comment: first change
        --precondition-sql-check expectedResult:0 SELECT count(*) FROM pg_tables WHERE tablename = 'x'
        CREATE TABLE x (id int);
        --rollback DROP TABLE x;

        --changeset bob:2 endDelimiter:GO runInTransaction:false failOnError:false
        SELECT 1
        GO
    """)

    first, second = parse_changelog(changelog)

    assert (first.author, first.id, first.filename) == ("Jane Doe", "init-1", "c.sql")
    assert first.split_statements is False
    assert first.run_on_change is True
    assert first.contexts == "dev or test"
    assert first.labels == "a,b"
    assert first.comments == "first change"
    assert "DROP" not in first.sql
    assert "precondition" not in first.sql
    assert first.statements() == ["CREATE TABLE x (id int);"]
    assert (second.end_delimiter, second.run_in_transaction, second.fail_on_error) == ("GO", False, False)
    assert second.statements() == ["SELECT 1"]


def test_checksum_ignores_trailing_whitespace_but_not_sql(tmp_path):
    original = parse_changelog(write(tmp_path / "a.sql", "--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n"))[0]
    spaced = parse_changelog(write(tmp_path / "a.sql", "--liquibase formatted sql\n--changeset a:1\nSELECT 1;   \n\n"))[0]
    edited = parse_changelog(write(tmp_path / "a.sql", "--liquibase formatted sql\n--changeset a:1\nSELECT 2;\n"))[0]

    assert spaced.checksum == original.checksum
    assert edited.checksum != original.checksum


def test_plain_sql_file_is_one_change_set_named_like_liquibase(tmp_path):
    (change_set,) = parse_changelog(write(tmp_path / "001_init.sql", "CREATE TABLE t (id int);\n"))

    assert (change_set.author, change_set.id, change_set.filename) == ("includeAll", "raw", "001_init.sql")


def test_sql_before_the_first_changeset_is_rejected_with_its_line(tmp_path):
    changelog = write(tmp_path / "bad.sql", "--liquibase formatted sql\nSELECT 1;\n--changeset a:1\nSELECT 2;\n")

    with pytest.raises(MigrationError, match=r"bad.sql:2: SQL appears before the first `--changeset"):
        parse_changelog(changelog)


def test_changeset_without_author_and_id_is_rejected(tmp_path):
    changelog = write(tmp_path / "bad.sql", "--liquibase formatted sql\n--changeset justname\nSELECT 1;\n")

    with pytest.raises(MigrationError, match="has no `author:id`"):
        parse_changelog(changelog)


def test_duplicate_change_set_is_rejected(tmp_path):
    changelog = write(tmp_path / "dup.sql", "--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n--changeset a:1\nSELECT 2;\n")

    with pytest.raises(MigrationError, match="appears twice in dup.sql"):
        parse_changelog(changelog)


def test_include_without_relative_flag_resolves_from_the_project_root(tmp_path):
    write(tmp_path / "db" / "master.xml", """
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <include file="db/changes/1.sql"/>
            <changeSet id="x" author="y"><sql>SELECT 1</sql></changeSet>
        </databaseChangeLog>
    """)
    write(tmp_path / "db" / "changes" / "1.sql", "--liquibase formatted sql\n--changeset a:1\nSELECT 1;\n")

    change_sets = parse_changelog(tmp_path / "db" / "master.xml")

    assert [(c.filename, c.id) for c in change_sets] == [("changes/1.sql", "1"), ("master.xml", "x")]


def test_missing_include_names_the_file(tmp_path):
    write(tmp_path / "master.xml", """
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <include file="nope.sql" relativeToChangelogFile="true"/>
        </databaseChangeLog>
    """)

    with pytest.raises(MigrationError, match=r"nope.sql included by .*master.xml"):
        parse_changelog(tmp_path / "master.xml")


def test_circular_include_is_rejected(tmp_path):
    write(tmp_path / "master.xml", """
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <include file="master.xml" relativeToChangelogFile="true"/>
        </databaseChangeLog>
    """)

    with pytest.raises(MigrationError, match="includes itself"):
        parse_changelog(tmp_path / "master.xml")


def test_unsupported_xml_change_type_is_rejected(tmp_path):
    write(tmp_path / "master.xml", """
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <changeSet id="1" author="a"><createTable tableName="t"/></changeSet>
        </databaseChangeLog>
    """)

    with pytest.raises(MigrationError, match="uses <createTable>"):
        parse_changelog(tmp_path / "master.xml")


@pytest.mark.parametrize(
    ("expression", "names", "expected"),
    [
        ("", [], True),
        ("dev", ["dev"], True),
        ("dev", ["prod"], False),
        ("dev, test", ["test"], True),
        ("dev or test", ["prod"], False),
        ("dev and test", ["dev"], False),
        ("!prod", ["dev"], True),
        ("!prod", ["prod"], False),
        ("(dev or test) and !slow", ["test"], True),
        ("(dev or test) and !slow", ["test", "slow"], False),
    ],
)
def test_context_expressions(expression, names, expected):
    assert matches_expression(expression, names) is expected


@pytest.mark.parametrize(
    "conninfo",
    ["postgresql://user:s%20cret@127.0.0.1:5432/db", "host=127.0.0.1 password='s cret' dbname=db"],
)
def test_redact_hides_the_password(conninfo):
    assert redact("failed for s cret and s%20cret", conninfo) == "failed for *** and ***"


def test_xml_change_set_preconditions_are_parsed(tmp_path):
    write(tmp_path / "master.xml", """
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <changeSet id="1" author="a">
                <preConditions onFail="MARK_RAN" onError="WARN">
                    <sqlCheck expectedResult="0">SELECT count(*) FROM t</sqlCheck>
                    <tableExists tableName="t" schemaName="public"/>
                </preConditions>
                <sql splitStatements="false">SELECT 1; SELECT 2;</sql>
            </changeSet>
        </databaseChangeLog>
    """)

    (change_set,) = parse_changelog(tmp_path / "master.xml")

    assert (change_set.on_fail, change_set.on_error) == ("MARK_RAN", "WARN")
    assert [p.describe() for p in change_set.preconditions] == [
        "sql-check expectedResult:0 SELECT count(*) FROM t",
        "table-exists public.t",
    ]
    assert change_set.statements() == ["SELECT 1; SELECT 2;"]


def test_unknown_precondition_action_is_rejected(tmp_path):
    changelog = write(tmp_path / "bad.sql", "--liquibase formatted sql\n--changeset a:1\n--preconditions onFail:IGNORE\nSELECT 1;\n")

    with pytest.raises(MigrationError, match="`onFail:IGNORE` is not one of HALT, CONTINUE, MARK_RAN, WARN"):
        parse_changelog(changelog)


def test_include_all_of_own_folder_skips_the_master_and_repeats(tmp_path):
    write(tmp_path / "changelog.xml", """
        <databaseChangeLog xmlns="http://www.liquibase.org/xml/ns/dbchangelog">
            <include file="b.sql" relativeToChangelogFile="true"/>
            <includeAll path="." relativeToChangelogFile="true"/>
        </databaseChangeLog>
    """)
    write(tmp_path / "a.sql", "CREATE TABLE a (id int);\n")
    write(tmp_path / "b.sql", "CREATE TABLE b (id int);\n")

    change_sets = parse_changelog(tmp_path / "changelog.xml")

    assert [c.filename for c in change_sets] == ["b.sql", "a.sql"]


def test_folder_changelog_reads_only_sql_files(tmp_path):
    write(tmp_path / "001.sql", "CREATE TABLE a (id int);\n")
    write(tmp_path / "notes.xml", "<not-a-changelog/>\n")

    assert [c.filename for c in parse_changelog(tmp_path)] == ["001.sql"]
