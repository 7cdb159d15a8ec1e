"""Liquibase formatted-SQL changelogs and folders of plain SQL files, applied to PostgreSQL.

A changelog is one of:

- a Liquibase master XML changelog with `<include file=...>`, `<includeAll path=...>` and
  `<changeSet>` elements holding `<sql>` or `<sqlFile>`;
- a formatted SQL file: `--liquibase formatted sql`, then `--changeset author:id [attribute:value ...]`
  blocks with optional `--comment:`, `--rollback`, `--validCheckSum:`, `--preconditions` and
  `--precondition-*` lines;
- a folder of `.sql` files, applied in alphabetical order of their paths, a plain file as one change set.

Each change set runs once, in a transaction together with its row in `databasechangelog` (Liquibase's
columns). A session-level advisory lock keeps two runners from applying the same changelog at once.

Preconditions of kinds `sql-check` and `table-exists` are evaluated, with onFail/onError HALT,
CONTINUE, MARK_RAN or WARN. Other kinds are logged and skipped.

NOTE: checksums are MD5 digests of the normalized SQL, not Liquibase's own checksum format, so a
database migrated here and later by Liquibase needs `liquibase clear-checksums` first.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from homunculy_nb import __version__
from homunculy_nb.errors import MigrationError

__all__ = [
    "AppliedChangeSet",
    "ChangeSet",
    "Precondition",
    "apply_changelog",
    "main",
    "parse_changelog",
    "split_statements",
]

logger = logging.getLogger(__name__)

CHANGELOG_TABLE = "databasechangelog"

# The advisory lock key: the first 8 bytes of sha256("homunculy-nb databasechangelog"), as a signed bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"homunculy-nb databasechangelog").digest()[:8], "big", signed=True)

# Author and id Liquibase gives a plain (unformatted) SQL file included as a whole.
RAW_AUTHOR = "includeAll"
RAW_ID = "raw"

_CREATE_CHANGELOG_TABLE = f"""
CREATE TABLE IF NOT EXISTS {CHANGELOG_TABLE} (
    id VARCHAR(255) NOT NULL,
    author VARCHAR(255) NOT NULL,
    filename VARCHAR(255) NOT NULL,
    dateexecuted TIMESTAMP NOT NULL,
    orderexecuted INTEGER NOT NULL,
    exectype VARCHAR(10) NOT NULL,
    md5sum VARCHAR(35),
    description VARCHAR(255),
    comments VARCHAR(255),
    tag VARCHAR(255),
    liquibase VARCHAR(20),
    contexts VARCHAR(255),
    labels VARCHAR(255),
    deployment_id VARCHAR(10)
)
"""

_HEADER = re.compile(r"^--\s*liquibase\s+formatted\s+sql\b(?P<rest>.*)$", re.IGNORECASE)
_CHANGESET = re.compile(r"^--\s*changeset\s+(?P<rest>.*)$", re.IGNORECASE)
_COMMENT = re.compile(r"^--\s*comment:?\s*(?P<text>.*)$", re.IGNORECASE)
_ROLLBACK = re.compile(r"^--\s*rollback\b", re.IGNORECASE)
_PRECONDITION = re.compile(r"^--\s*precondition-(?P<kind>[\w-]+)\s*(?P<rest>.*)$", re.IGNORECASE)
_PRECONDITIONS = re.compile(r"^--\s*preconditions\b(?P<rest>.*)$", re.IGNORECASE)
_VALID_CHECKSUM = re.compile(r"^--\s*validCheckSum:?\s*(?P<value>.*)$", re.IGNORECASE)
_IGNORE_LINES = re.compile(r"^--\s*ignoreLines:\s*(?P<value>\S+)", re.IGNORECASE)
_ROLLBACK_BLOCK = re.compile(r"^/\*\s*liquibase\s+rollback\b", re.IGNORECASE)
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$")
_ATTRIBUTE = re.compile(r'(?P<key>[A-Za-z]+):(?P<value>"[^"]*"|\'[^\']*\'|\S*)')


# ---------------------------------------------------------------------------------------------------
# Model


@dataclass(frozen=True)
class Precondition:
    """A check that runs before a pending change set: `sql-check` (`expected` compared with the first
    column of the first row) or `table-exists` (`table`, optional `schema`)."""

    kind: str
    sql: str = ""
    expected: str = ""
    table: str = ""
    schema: str = ""

    def describe(self) -> str:
        if self.kind == "sql-check":
            return f"sql-check expectedResult:{self.expected} {self.sql}"
        return f"table-exists {self.schema + '.' if self.schema else ''}{self.table}"


# Actions on a failed precondition: HALT stops the run, CONTINUE skips the change set until the next
# run, MARK_RAN records it as run without running it, WARN runs it anyway.
PRECONDITION_ACTIONS = ("HALT", "CONTINUE", "MARK_RAN", "WARN")


@dataclass(frozen=True)
class ChangeSet:
    """One change set: its identity, its SQL and the attributes that change how it runs."""

    author: str
    id: str
    filename: str
    sql: str
    source: Path
    line: int = 1
    comments: str = ""
    split_statements: bool = True
    strip_comments: bool = False
    end_delimiter: str | None = None
    run_on_change: bool = False
    run_always: bool = False
    run_in_transaction: bool = True
    fail_on_error: bool = True
    contexts: str = ""
    labels: str = ""
    dbms: str = ""
    ignore: bool = False
    valid_checksums: tuple[str, ...] = ()
    description: str = "sql"
    preconditions: tuple[Precondition, ...] = ()
    on_fail: str = "HALT"
    on_error: str = "HALT"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.id, self.author, self.filename)

    @property
    def label(self) -> str:
        """The change set as Liquibase names it: `filename::id::author`."""
        return f"{self.filename}::{self.id}::{self.author}"

    @property
    def checksum(self) -> str:
        """MD5 of the normalized SQL and the attributes that change how it is executed."""
        lines = [line.rstrip() for line in self.sql.replace("\r\n", "\n").split("\n")]
        body = "\n".join(lines).strip("\n")
        settings = f"split={self.split_statements};strip={self.strip_comments};end={self.end_delimiter or ''}"
        return hashlib.md5(f"{settings}\n{body}".encode()).hexdigest()

    def statements(self) -> list[str]:
        """Return the SQL statements to execute, in order."""
        text = strip_sql_comments(self.sql) if self.strip_comments else self.sql
        if not self.split_statements:
            return [text.strip()] if _has_code(text) else []
        return split_statements(text, self.end_delimiter)


@dataclass(frozen=True)
class AppliedChangeSet:
    """The outcome of one change set in `apply_changelog`.

    `exec_type` is "EXECUTED" (first run), "RERAN" (runOnChange or runAlways), "SKIPPED" (already
    applied, filtered out by context, labels, dbms or ignore, or a failed precondition with
    onFail:CONTINUE), "MARK_RAN" (a failed precondition with onFail:MARK_RAN) or "FAILED"
    (failOnError:false).
    """

    id: str
    author: str
    filename: str
    exec_type: str
    checksum: str
    order_executed: int | None = None
    duration_s: float = 0.0
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.filename}::{self.id}::{self.author}"


# ---------------------------------------------------------------------------------------------------
# SQL text: statement splitting that respects quotes, dollar quotes and comments


def _scan(sql: str) -> Iterable[tuple[int, int, str]]:
    """Yield (start, end, kind) spans of `sql`, kind being "code", "string", "comment" or "dollar"."""
    i = 0
    n = len(sql)
    code_start = 0
    while i < n:
        char = sql[i]
        nxt = sql[i + 1] if i + 1 < n else ""

        if char == "-" and nxt == "-":
            end = sql.find("\n", i)
            end = n if end == -1 else end
            kind = "comment"
        elif char == "/" and nxt == "*":
            end = _block_comment_end(sql, i)
            kind = "comment"
        elif char == "'":
            escaped = i > 0 and sql[i - 1] in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            end = _quoted_end(sql, i, "'", backslash=escaped)
            kind = "string"
        elif char == '"':
            end = _quoted_end(sql, i, '"', backslash=False)
            kind = "string"
        elif char == "$" and (match := _DOLLAR_TAG.match(sql, i)) and not _in_identifier(sql, i):
            tag = match.group(0)
            close = sql.find(tag, i + len(tag))
            end = n if close == -1 else close + len(tag)
            kind = "dollar"
        else:
            i += 1
            continue

        if code_start < i:
            yield code_start, i, "code"
        yield i, end, kind
        i = code_start = end

    if code_start < n:
        yield code_start, n, "code"


def _in_identifier(sql: str, i: int) -> bool:
    # `$1` parameters and identifiers such as `a$b$` are not dollar quotes.
    return i > 0 and (sql[i - 1].isalnum() or sql[i - 1] == "_")


def _block_comment_end(sql: str, start: int) -> int:
    # PostgreSQL block comments nest.
    depth = 0
    i = start
    while i < len(sql):
        if sql.startswith("/*", i):
            depth += 1
            i += 2
        elif sql.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(sql)


def _quoted_end(sql: str, start: int, quote: str, backslash: bool) -> int:
    i = start + 1
    while i < len(sql):
        if backslash and sql[i] == "\\":
            i += 2
            continue
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)


def _has_code(sql: str) -> bool:
    return any(kind != "comment" and sql[start:end].strip() for start, end, kind in _scan(sql))


def strip_sql_comments(sql: str) -> str:
    """Return `sql` without its `--` and `/* */` comments, leaving strings and dollar quotes intact."""
    return "".join(sql[start:end] for start, end, kind in _scan(sql) if kind != "comment")


def split_statements(sql: str, end_delimiter: str | None = None) -> list[str]:
    """Split `sql` into statements at `;` (or `end_delimiter`) outside quotes, dollar quotes and comments.

    A delimiter made of letters or `/` (such as `GO` or `/`) counts only when alone on its line, as in
    SQL*Plus and Transact-SQL scripts. Pieces holding nothing but comments are dropped.
    """
    delimiter = end_delimiter if end_delimiter not in (None, "") else ";"
    on_own_line = bool(re.fullmatch(r"[A-Za-z/]+", delimiter))

    statements = []
    current: list[str] = []
    for start, end, kind in _scan(sql):
        chunk = sql[start:end]
        if kind != "code":
            current.append(chunk)
            continue
        pieces = _split_code(chunk, delimiter, on_own_line)
        for piece in pieces[:-1]:
            current.append(piece)
            statements.append("".join(current))
            current = []
        current.append(pieces[-1])
    statements.append("".join(current))

    return [statement.strip() for statement in statements if _has_code(statement)]


def _split_code(chunk: str, delimiter: str, on_own_line: bool) -> list[str]:
    if not on_own_line:
        return chunk.split(delimiter)
    pattern = re.compile(rf"^[ \t]*{re.escape(delimiter)}[ \t]*$", re.IGNORECASE | re.MULTILINE)
    return pattern.split(chunk)


# ---------------------------------------------------------------------------------------------------
# Parsing


@dataclass
class _ParseContext:
    root: Path
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    visiting: list[Path] = field(default_factory=list)
    parsed: set[Path] = field(default_factory=set)


def parse_changelog(path: str | os.PathLike[str]) -> list[ChangeSet]:
    """Read a changelog (master XML, formatted SQL file or folder of .sql files) into its change sets.

    Raises `MigrationError` naming the file (and line) for a missing file, an unreadable or unsupported
    element, or two change sets with the same author, id and file.
    """
    changelog = Path(path).absolute()
    if not changelog.exists():
        raise MigrationError(f"The changelog {changelog} does not exist. Pass a master XML file, a SQL file or a folder.")

    root = changelog if changelog.is_dir() else changelog.parent
    context = _ParseContext(root=root)
    if changelog.is_dir():
        change_sets = _parse_folder(changelog, context, suffixes=(".sql",))
    else:
        change_sets = _parse_file(changelog, context)

    for change_set in change_sets:
        if change_set.key in context.seen:
            raise MigrationError(
                f"The change set `{change_set.id}` by `{change_set.author}` appears twice in "
                f"{change_set.filename}. Give each change set a unique id."
            )
        context.seen.add(change_set.key)
    return change_sets


def _logical_name(path: Path, context: _ParseContext) -> str:
    return Path(os.path.relpath(path, context.root)).as_posix()


def _parse_file(path: Path, context: _ParseContext) -> list[ChangeSet]:
    if path in context.visiting:
        chain = " -> ".join(str(item) for item in [*context.visiting, path])
        raise MigrationError(f"The changelog includes itself: {chain}. Remove the circular include.")

    if path in context.parsed:
        # Included twice (say by <include> and by <includeAll>): its change sets run once, in the first place.
        logger.debug("Skipping %s, which the changelog already included", path)
        return []

    context.visiting.append(path)
    context.parsed.add(path)
    try:
        suffix = path.suffix.lower()
        if suffix == ".xml":
            return _parse_xml(path, context)
        if suffix == ".sql":
            return _parse_sql_file(path, context)
        raise MigrationError(
            f"The changelog file {path} has an unsupported type `{suffix or path.name}`. "
            "Use a Liquibase XML changelog, a formatted SQL file or a plain .sql file."
        )
    finally:
        context.visiting.pop()


def _parse_folder(
    folder: Path, context: _ParseContext, suffixes: tuple[str, ...] = (".sql", ".xml"), allow_empty: bool = False,
) -> list[ChangeSet]:
    """Parse the files under `folder` with the given suffixes, in alphabetical order of their paths.

    The changelog that includes the folder is left out, as Liquibase's includeAll does.
    """
    files = sorted(
        (
            candidate
            for candidate in folder.rglob("*")
            if candidate.is_file() and candidate.suffix.lower() in suffixes and candidate not in context.visiting
        ),
        key=lambda candidate: candidate.relative_to(folder).as_posix(),
    )
    if not files and not allow_empty:
        raise MigrationError(f"The changelog folder {folder} contains no {' or '.join(suffixes)} files.")

    change_sets: list[ChangeSet] = []
    for file in files:
        change_sets += _parse_file(file, context)
    return change_sets


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationError(f"Could not read the changelog file {path}: {exc}.") from exc


def _parse_sql_file(path: Path, context: _ParseContext) -> list[ChangeSet]:
    text = _read_text(path)
    lines = text.splitlines()
    first = next((line.strip() for line in lines if line.strip()), "")
    header = _HEADER.match(first)

    if header is None:
        # A plain SQL file: one change set, named as Liquibase names an included raw SQL file.
        return [ChangeSet(author=RAW_AUTHOR, id=RAW_ID, filename=_logical_name(path, context), sql=text, source=path)]

    header_attributes = _parse_attributes(header.group("rest"))
    filename = header_attributes.get("logicalFilePath") or _logical_name(path, context)
    return _parse_formatted_sql(lines, path, filename)


def _parse_formatted_sql(lines: list[str], path: Path, filename: str) -> list[ChangeSet]:
    change_sets: list[ChangeSet] = []
    current: dict[str, Any] | None = None
    body: list[str] = []
    ignoring = False
    in_rollback_block = False

    def finish() -> None:
        if current is not None:
            change_sets.append(ChangeSet(sql="\n".join(body), **current))

    for number, line in enumerate(lines, start=1):
        stripped = line.strip()

        ignore = _IGNORE_LINES.match(stripped)
        if ignore:
            ignoring = ignore.group("value").lower() == "start"
            continue
        if ignoring:
            continue

        # A `/* liquibase rollback ... */` block holds rollback SQL, which is never run here.
        if in_rollback_block or _ROLLBACK_BLOCK.match(stripped):
            in_rollback_block = "*/" not in stripped
            continue

        changeset = _CHANGESET.match(stripped)
        if changeset:
            finish()
            current = _parse_changeset_line(changeset.group("rest"), path, number, filename)
            body = []
            continue

        if _HEADER.match(stripped) or _ROLLBACK.match(stripped):
            continue

        policy = _PRECONDITIONS.match(stripped)
        if policy:
            if current is not None:
                current.update(_precondition_policy(_parse_attributes(policy.group("rest")), path, number))
            continue

        precondition = _PRECONDITION.match(stripped)
        if precondition:
            if current is not None:
                parsed = _parse_precondition(precondition.group("kind"), precondition.group("rest"), path, number)
                if parsed is not None:
                    current["preconditions"] += (parsed,)
            continue

        comment = _COMMENT.match(stripped)
        if comment and current is not None:
            current["comments"] = " ".join(filter(None, [current["comments"], comment.group("text").strip()]))
            continue

        valid = _VALID_CHECKSUM.match(stripped)
        if valid and current is not None:
            current["valid_checksums"] += (valid.group("value").split()[0] if valid.group("value") else "",)
            continue

        if current is None:
            if stripped and not stripped.startswith("--"):
                raise MigrationError(
                    f"{path}:{number}: SQL appears before the first `--changeset author:id` line. "
                    "Start each change set with a `--changeset` line."
                )
            continue
        body.append(line)

    finish()
    if not change_sets:
        raise MigrationError(f"The formatted SQL file {path} contains no `--changeset author:id` line.")
    return change_sets


_BOOLEAN_ATTRIBUTES = {
    "splitStatements": "split_statements",
    "stripComments": "strip_comments",
    "runOnChange": "run_on_change",
    "runAlways": "run_always",
    "runInTransaction": "run_in_transaction",
    "failOnError": "fail_on_error",
    "ignore": "ignore",
}
_TEXT_ATTRIBUTES = {
    "endDelimiter": "end_delimiter",
    "context": "contexts",
    "contextFilter": "contexts",
    "contexts": "contexts",
    "labels": "labels",
    "dbms": "dbms",
}
# Liquibase attributes that do not change how a change set runs here.
_IGNORED_ATTRIBUTES = {"rollbackSplitStatements", "rollbackEndDelimiter", "created", "runOrder", "logicalFilePath"}


def _parse_attributes(text: str) -> dict[str, str]:
    attributes = {}
    for match in _ATTRIBUTE.finditer(text):
        value = match.group("value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        attributes[match.group("key")] = value
    return attributes


def _parse_changeset_line(rest: str, path: Path, line: int, filename: str) -> dict[str, Any]:
    identity = re.match(r'^(?:"(?P<quoted>[^"]+)"|(?P<author>[^\s:]+)):(?P<id>\S+)(?P<rest>.*)$', rest.strip())
    if identity is None:
        raise MigrationError(
            f"{path}:{line}: `--changeset {rest.strip()}` has no `author:id`. Write `--changeset alice:1`."
        )

    attributes = _parse_attributes(identity.group("rest"))
    fields: dict[str, Any] = {
        "author": identity.group("quoted") or identity.group("author"),
        "id": identity.group("id"),
        "filename": attributes.get("logicalFilePath") or filename,
        "source": path,
        "line": line,
        "comments": "",
        "valid_checksums": (),
        "preconditions": (),
    }
    for key, value in attributes.items():
        if key in _BOOLEAN_ATTRIBUTES:
            fields[_BOOLEAN_ATTRIBUTES[key]] = _boolean(value, key, path, line)
        elif key in _TEXT_ATTRIBUTES:
            fields[_TEXT_ATTRIBUTES[key]] = value
        elif key not in _IGNORED_ATTRIBUTES:
            logger.warning("%s:%s: ignoring the unknown change set attribute `%s`", path, line, key)
    return fields


def _precondition_policy(attributes: dict[str, str], path: Path, line: int) -> dict[str, str]:
    policy = {}
    for key, field_name in (("onFail", "on_fail"), ("onError", "on_error")):
        value = attributes.get(key)
        if value is None:
            continue
        if value.upper() not in PRECONDITION_ACTIONS:
            raise MigrationError(
                f"{path}:{line}: `{key}:{value}` is not one of {', '.join(PRECONDITION_ACTIONS)}."
            )
        policy[field_name] = value.upper()
    return policy


def _parse_precondition(kind: str, rest: str, path: Path, line: int) -> Precondition | None:
    kind = kind.lower()
    if kind == "sql-check":
        match = re.match(r"^expectedResult:(?P<expected>\"[^\"]*\"|'[^']*'|\S+)\s+(?P<sql>.+)$", rest.strip())
        if match is None:
            raise MigrationError(
                f"{path}:{line}: write a SQL check as `--precondition-sql-check expectedResult:0 SELECT ...`."
            )
        expected = match.group("expected").strip("\"'")
        return Precondition("sql-check", sql=match.group("sql").strip(), expected=expected)
    if kind == "table-exists":
        attributes = _parse_attributes(rest)
        table = attributes.get("table") or attributes.get("tableName")
        if not table:
            raise MigrationError(f"{path}:{line}: write `--precondition-table-exists table:NAME [schema:NAME]`.")
        return Precondition("table-exists", table=table, schema=attributes.get("schema") or attributes.get("schemaName") or "")
    logger.warning("%s:%s: the precondition `%s` is not evaluated here; the change set runs without it", path, line, kind)
    return None


def _boolean(value: str, key: str, path: Path, line: int) -> bool:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise MigrationError(f"{path}:{line}: `{key}:{value}` must be `{key}:true` or `{key}:false`.")


# -- XML ------------------------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_boolean(element: ElementTree.Element, name: str, default: bool, path: Path) -> bool:
    value = element.get(name)
    if value is None:
        return default
    return _boolean(value, name, path, 0)


def _parse_xml(path: Path, context: _ParseContext) -> list[ChangeSet]:
    try:
        document = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise MigrationError(f"The changelog {path} is not well-formed XML: {exc}.") from exc
    if _local(document.tag) != "databaseChangeLog":
        raise MigrationError(f"The root element of {path} is `{_local(document.tag)}`, not `databaseChangeLog`.")

    filename = document.get("logicalFilePath") or _logical_name(path, context)
    change_sets: list[ChangeSet] = []
    for element in document:
        if not isinstance(element.tag, str):
            continue
        tag = _local(element.tag)
        if tag == "include":
            change_sets += _parse_include(element, path, context)
        elif tag == "includeAll":
            change_sets += _parse_include_all(element, path, context)
        elif tag == "changeSet":
            change_sets.append(_parse_xml_change_set(element, path, filename))
        elif tag in ("property", "preConditions", "meta"):
            logger.debug("%s: ignoring <%s>", path, tag)
        else:
            raise MigrationError(
                f"The changelog {path} uses <{tag}>, which homunculy-nb does not run. "
                "Use <include>, <includeAll>, or <changeSet> with <sql> or <sqlFile>."
            )
    return change_sets


def _resolve(reference: str, relative_to_file: bool, including: Path, context: _ParseContext) -> Path:
    """Find an included path: beside the including file, or under the master's folder or its parents."""
    if os.path.isabs(reference):
        return Path(reference)
    if relative_to_file:
        return including.parent / reference

    # Liquibase resolves such paths against its search path, which is usually the project root:
    # try the master changelog's folder, then each folder above it, then the working directory.
    for base in [context.root, *context.root.parents, Path.cwd()]:
        candidate = base / reference
        if candidate.exists():
            return candidate
    return context.root / reference


def _parse_include(element: ElementTree.Element, path: Path, context: _ParseContext) -> list[ChangeSet]:
    reference = element.get("file")
    if not reference:
        raise MigrationError(f"An <include> in {path} has no `file` attribute.")
    if _xml_boolean(element, "ignore", False, path):
        return []

    target = _resolve(reference, _xml_boolean(element, "relativeToChangelogFile", False, path), path, context)
    if not target.is_file():
        if not _xml_boolean(element, "errorIfMissing", True, path):
            return []
        raise MigrationError(f"The file {target} included by {path} (`{reference}`) does not exist.")
    return _with_include_filters(_parse_file(target, context), element)


def _parse_include_all(element: ElementTree.Element, path: Path, context: _ParseContext) -> list[ChangeSet]:
    reference = element.get("path")
    if not reference:
        raise MigrationError(f"An <includeAll> in {path} has no `path` attribute.")
    if _xml_boolean(element, "ignore", False, path):
        return []

    folder = _resolve(reference, _xml_boolean(element, "relativeToChangelogFile", False, path), path, context)
    must_exist = _xml_boolean(element, "errorIfMissingOrEmpty", True, path)
    if not folder.is_dir():
        if not must_exist:
            return []
        raise MigrationError(f"The folder {folder} named by <includeAll> in {path} (`{reference}`) does not exist.")

    change_sets = _parse_folder(folder, context, allow_empty=not must_exist)
    return _with_include_filters(change_sets, element)


def _with_include_filters(change_sets: list[ChangeSet], element: ElementTree.Element) -> list[ChangeSet]:
    # An include's context and labels apply to every change set it brings in, on top of their own.
    from dataclasses import replace

    context = element.get("contextFilter") or element.get("context") or ""
    labels = element.get("labels") or ""
    if not context and not labels:
        return change_sets
    return [
        replace(
            change_set,
            contexts=_combine(change_set.contexts, context, " and "),
            labels=_combine(change_set.labels, labels, ","),
        )
        for change_set in change_sets
    ]


def _combine(own: str, inherited: str, joiner: str) -> str:
    if own and inherited:
        return f"({inherited}){joiner}({own})" if joiner == " and " else f"{inherited}{joiner}{own}"
    return own or inherited


def _parse_xml_change_set(element: ElementTree.Element, path: Path, filename: str) -> ChangeSet:
    author, identifier = element.get("author"), element.get("id")
    if not author or not identifier:
        raise MigrationError(f"A <changeSet> in {path} lacks `id` or `author`. Give it both.")

    sql_parts: list[str] = []
    settings: dict[str, Any] = {}
    comments = ""
    for child in element:
        if not isinstance(child.tag, str):
            continue
        tag = _local(child.tag)
        if tag == "sql":
            sql_parts.append(child.text or "")
        elif tag == "sqlFile":
            sql_parts.append(_read_sql_file_element(child, path))
        elif tag == "comment":
            comments = (child.text or "").strip()
            continue
        elif tag == "preConditions":
            settings.update(_parse_xml_preconditions(child, path))
            continue
        elif tag in ("rollback", "validCheckSum"):
            continue
        else:
            raise MigrationError(
                f"The change set `{identifier}` in {path} uses <{tag}>, which homunculy-nb does not run. "
                "Write the change as <sql> or as a formatted SQL file."
            )
        if child.get("splitStatements") is not None:
            settings["split_statements"] = _xml_boolean(child, "splitStatements", True, path)
        if child.get("stripComments") is not None:
            settings["strip_comments"] = _xml_boolean(child, "stripComments", False, path)
        if child.get("endDelimiter") is not None:
            settings["end_delimiter"] = child.get("endDelimiter")

    valid = tuple((child.text or "").strip() for child in element if isinstance(child.tag, str) and _local(child.tag) == "validCheckSum")
    return ChangeSet(
        author=author,
        id=identifier,
        filename=element.get("logicalFilePath") or filename,
        sql="\n".join(sql_parts),
        source=path,
        comments=comments,
        run_on_change=_xml_boolean(element, "runOnChange", False, path),
        run_always=_xml_boolean(element, "runAlways", False, path),
        run_in_transaction=_xml_boolean(element, "runInTransaction", True, path),
        fail_on_error=_xml_boolean(element, "failOnError", True, path),
        contexts=element.get("contextFilter") or element.get("context") or "",
        labels=element.get("labels") or "",
        dbms=element.get("dbms") or "",
        ignore=_xml_boolean(element, "ignore", False, path),
        valid_checksums=valid,
        **settings,
    )


def _parse_xml_preconditions(element: ElementTree.Element, path: Path) -> dict[str, Any]:
    settings: dict[str, Any] = _precondition_policy(dict(element.attrib), path, 0)
    checks = []
    for child in element:
        if not isinstance(child.tag, str):
            continue
        tag = _local(child.tag)
        if tag == "sqlCheck":
            checks.append(Precondition("sql-check", sql=(child.text or "").strip(), expected=child.get("expectedResult", "")))
        elif tag == "tableExists":
            checks.append(Precondition("table-exists", table=child.get("tableName", ""), schema=child.get("schemaName", "")))
        else:
            logger.warning("%s: the precondition <%s> is not evaluated here; the change set runs without it", path, tag)
    settings["preconditions"] = tuple(checks)
    return settings


def _read_sql_file_element(element: ElementTree.Element, path: Path) -> str:
    reference = element.get("path")
    if not reference:
        raise MigrationError(f"A <sqlFile> in {path} has no `path` attribute.")
    relative = _xml_boolean(element, "relativeToChangelogFile", False, path)
    target = path.parent / reference if relative or not os.path.isabs(reference) else Path(reference)
    if not target.is_file():
        raise MigrationError(f"The file {target} named by <sqlFile> in {path} does not exist.")
    return _read_text(target)


# ---------------------------------------------------------------------------------------------------
# Filters: contexts, labels, dbms


def matches_expression(expression: str, names: Iterable[str]) -> bool:
    """Evaluate a Liquibase context or label expression (`a and !b`, `a or b`, `a, b`, parentheses)
    against the given names. An empty expression matches."""
    tokens = re.findall(r"\(|\)|!|,|[^\s(),!]+", expression)
    if not tokens:
        return True
    available = {name.strip().lower() for name in names}
    position = 0

    def peek() -> str | None:
        return tokens[position].lower() if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def parse_or() -> bool:
        value = parse_and()
        while peek() in ("or", ","):
            take()
            value = parse_and() or value
        return value

    def parse_and() -> bool:
        value = parse_not()
        while peek() == "and":
            take()
            value = parse_not() and value
        return value

    def parse_not() -> bool:
        if peek() in ("!", "not"):
            take()
            return not parse_not()
        if peek() == "(":
            take()
            value = parse_or()
            if peek() == ")":
                take()
            return value
        token = take().lower()
        return token == "@" or token in available

    try:
        return parse_or()
    except IndexError:
        raise MigrationError(f"The context or label expression `{expression}` is incomplete.") from None


def _skip_reason(change_set: ChangeSet, contexts: Sequence[str] | None, labels: str | None) -> str:
    if change_set.ignore:
        return "ignore:true"
    if change_set.dbms and not _dbms_matches(change_set.dbms):
        return f"dbms:{change_set.dbms}"
    if contexts is not None and change_set.contexts and not matches_expression(change_set.contexts, contexts):
        return f"context {change_set.contexts}"
    if labels and not matches_expression(labels, change_set.labels.split(",")):
        return f"labels {change_set.labels or '(none)'}"
    return ""


def _dbms_matches(dbms: str) -> bool:
    names = [name.strip().lower() for name in dbms.split(",") if name.strip()]
    if any(name in ("postgresql", "all") for name in names):
        return True
    negated = [name[1:] for name in names if name.startswith("!")]
    return bool(negated) and "postgresql" not in negated and len(negated) == len(names)


# ---------------------------------------------------------------------------------------------------
# Applying


def apply_changelog(
    changelog: str | os.PathLike[str],
    conninfo: str,
    contexts: Sequence[str] | None = None,
    labels: str | None = None,
    lock_timeout: float = 300.0,
    on_result: Callable[[AppliedChangeSet], None] | None = None,
) -> list[AppliedChangeSet]:
    """Apply every pending change set of `changelog` to the database at `conninfo`, in order.

    `contexts` lists the active contexts (None runs every change set regardless of its context) and
    `labels` is a label expression. `on_result(result)` is called after each change set. Raises
    `MigrationError` naming the file and id of a failing change set or of an applied change set whose
    checksum changed; nothing after it runs.
    """
    import psycopg

    change_sets = parse_changelog(changelog)

    try:
        connection = psycopg.connect(conninfo, autocommit=True, connect_timeout=30)
    except psycopg.Error as exc:
        raise MigrationError(f"Could not connect to the database: {redact(str(exc), conninfo)}") from exc

    try:
        with connection:
            _acquire_lock(connection, lock_timeout)
            try:
                return _apply_all(connection, change_sets, contexts, labels, on_result)
            finally:
                # Ending the session releases the lock too; unlocking first keeps a pooled session clean.
                with contextlib.suppress(psycopg.Error):
                    connection.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    except psycopg.Error as exc:
        raise MigrationError(
            f"The database failed while applying {changelog}: {redact(str(exc).strip(), conninfo)}"
        ) from exc


def _apply_all(
    connection: Any,
    change_sets: list[ChangeSet],
    contexts: Sequence[str] | None,
    labels: str | None,
    on_result: Callable[[AppliedChangeSet], None] | None,
) -> list[AppliedChangeSet]:
    connection.execute(_CREATE_CHANGELOG_TABLE)
    applied = _applied_rows(connection)
    _check_checksums(change_sets, applied)

    deployment_id = str(int(time.time() * 1000))[-10:]
    results = []
    for change_set in change_sets:
        result = _apply_one(connection, change_set, applied, contexts, labels, deployment_id)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _acquire_lock(connection: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if connection.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            return
        if time.monotonic() > deadline:
            # pg_locks shows a bigint advisory key as its high and low 32 bits, objsubid 1.
            holder = connection.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                "AND classid::bigint = %s AND objid::bigint = %s AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())",
                ((LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF),
            ).fetchone()
            who = f"the session with backend pid {holder[0]}" if holder else "another session"
            raise MigrationError(
                f"Timed out after {timeout:g} s waiting for the changelog lock held by {who}. "
                "Wait for the other migration run to finish, or end that session."
            )
        time.sleep(0.2)


@dataclass
class _AppliedRow:
    checksum: str | None
    order: int


def _applied_rows(connection: Any) -> dict[tuple[str, str, str], _AppliedRow]:
    rows = connection.execute(
        f"SELECT id, author, filename, md5sum, orderexecuted FROM {CHANGELOG_TABLE} "
        "WHERE exectype IN ('EXECUTED', 'RERAN', 'MARK_RAN')"
    ).fetchall()
    return {(row[0], row[1], row[2]): _AppliedRow(row[3], row[4]) for row in rows}


def _checksum_accepted(change_set: ChangeSet, stored: str | None) -> bool:
    if stored is None or stored == change_set.checksum:
        return True
    valid = {value.lower() for value in change_set.valid_checksums}
    return "any" in valid or stored.lower() in valid


def _check_checksums(change_sets: list[ChangeSet], applied: dict[tuple[str, str, str], _AppliedRow]) -> None:
    # Checked for every change set before anything runs, so an edited old change set stops the run early.
    for change_set in change_sets:
        row = applied.get(change_set.key)
        if row is None or change_set.run_on_change or _checksum_accepted(change_set, row.checksum):
            continue
        raise MigrationError(
            f"The change set `{change_set.id}` by `{change_set.author}` in {change_set.filename} "
            f"({change_set.source}:{change_set.line}) was applied with checksum {row.checksum}, but "
            f"its SQL now has checksum {change_set.checksum}. Revert the edit and put the change in a "
            "new change set, or mark the change set runOnChange:true."
        )


def _apply_one(
    connection: Any,
    change_set: ChangeSet,
    applied: dict[tuple[str, str, str], _AppliedRow],
    contexts: Sequence[str] | None,
    labels: str | None,
    deployment_id: str,
) -> AppliedChangeSet:
    import psycopg

    def outcome(exec_type: str, **extra: Any) -> AppliedChangeSet:
        return AppliedChangeSet(
            id=change_set.id, author=change_set.author, filename=change_set.filename,
            exec_type=exec_type, checksum=change_set.checksum, **extra,
        )

    reason = _skip_reason(change_set, contexts, labels)
    if reason:
        return outcome("SKIPPED", reason=f"filtered out by {reason}")

    row = applied.get(change_set.key)
    changed = row is not None and row.checksum != change_set.checksum
    if row is not None and not change_set.run_always and not (change_set.run_on_change and changed):
        return outcome("SKIPPED", reason="already applied", order_executed=row.order)

    verdict = _check_preconditions(connection, change_set)
    if verdict in ("CONTINUE", "MARK_RAN") and row is None:
        if verdict == "CONTINUE":
            return outcome("SKIPPED", reason="precondition failed (onFail:CONTINUE)")
        order = _record(connection, change_set, "MARK_RAN", deployment_id)
        applied[change_set.key] = _AppliedRow(change_set.checksum, order)
        return outcome("MARK_RAN", order_executed=order, reason="precondition failed (onFail:MARK_RAN)")
    if verdict in ("CONTINUE", "MARK_RAN"):
        return outcome("SKIPPED", reason=f"precondition failed (onFail:{verdict})", order_executed=row.order)

    exec_type = "EXECUTED" if row is None else "RERAN"
    started = time.monotonic()
    try:
        if change_set.run_in_transaction:
            with connection.transaction():
                order = _execute_and_record(connection, change_set, exec_type, deployment_id)
        else:
            order = _execute_and_record(connection, change_set, exec_type, deployment_id)
    except psycopg.Error as exc:
        message = (
            f"The change set `{change_set.id}` by `{change_set.author}` in {change_set.filename} "
            f"({change_set.source}:{change_set.line}) failed: {str(exc).strip()}"
        )
        if change_set.fail_on_error:
            raise MigrationError(message) from exc
        logger.warning("%s; continuing because of failOnError:false", message)
        return outcome("FAILED", reason=str(exc).strip(), duration_s=time.monotonic() - started)

    applied[change_set.key] = _AppliedRow(change_set.checksum, order)
    return outcome(exec_type, order_executed=order, duration_s=time.monotonic() - started)


def _check_preconditions(connection: Any, change_set: ChangeSet) -> str:
    """Evaluate the change set's preconditions and return "PASS" or the action their failure calls for.

    Raises `MigrationError` when that action is HALT.
    """
    import psycopg

    for precondition in change_set.preconditions:
        try:
            passed = _precondition_holds(connection, precondition)
            action, what = change_set.on_fail, "failed"
        except psycopg.Error as exc:
            passed = False
            action, what = change_set.on_error, f"raised an error ({str(exc).strip()})"
        if passed:
            continue

        message = (
            f"The precondition `{precondition.describe()}` of the change set `{change_set.id}` by "
            f"`{change_set.author}` in {change_set.filename} {what}"
        )
        if action == "HALT":
            raise MigrationError(f"{message}. Fix the database or set onFail/onError on `--preconditions`.")
        if action == "WARN":
            logger.warning("%s; running the change set anyway (WARN)", message)
            continue
        logger.info("%s; %s", message, action)
        return action
    return "PASS"


def _precondition_holds(connection: Any, precondition: Precondition) -> bool:
    if precondition.kind == "table-exists":
        name = f"{precondition.schema}.{precondition.table}" if precondition.schema else precondition.table
        return connection.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]

    # Checked in a transaction that is rolled back, so the check cannot change the database.
    with connection.transaction(force_rollback=True):
        row = connection.execute(precondition.sql, prepare=False).fetchone()
    value = "" if row is None or row[0] is None else str(row[0])
    return value.strip().lower() == precondition.expected.strip().lower()


def _execute_and_record(connection: Any, change_set: ChangeSet, exec_type: str, deployment_id: str) -> int:
    for statement in change_set.statements():
        # Executed without parameters, so a statement may contain `%` and several commands.
        connection.execute(statement, prepare=False)
    return _record(connection, change_set, exec_type, deployment_id)


def _record(connection: Any, change_set: ChangeSet, exec_type: str, deployment_id: str) -> int:
    order = connection.execute(f"SELECT COALESCE(MAX(orderexecuted), 0) + 1 FROM {CHANGELOG_TABLE}").fetchone()[0]
    values = {
        "id": change_set.id,
        "author": change_set.author,
        "filename": change_set.filename,
        "order": order,
        "exectype": exec_type,
        "md5sum": change_set.checksum,
        "description": change_set.description,
        "comments": change_set.comments[:255],
        "liquibase": f"homunculy-nb {__version__}"[:20],
        "contexts": change_set.contexts[:255] or None,
        "labels": change_set.labels[:255] or None,
        "deployment_id": deployment_id,
    }
    if exec_type == "RERAN":
        connection.execute(
            f"UPDATE {CHANGELOG_TABLE} SET dateexecuted = now(), orderexecuted = %(order)s, "
            "exectype = %(exectype)s, md5sum = %(md5sum)s, deployment_id = %(deployment_id)s "
            "WHERE id = %(id)s AND author = %(author)s AND filename = %(filename)s",
            values,
        )
    else:
        connection.execute(
            f"INSERT INTO {CHANGELOG_TABLE} (id, author, filename, dateexecuted, orderexecuted, exectype, "
            "md5sum, description, comments, liquibase, contexts, labels, deployment_id) VALUES "
            "(%(id)s, %(author)s, %(filename)s, now(), %(order)s, %(exectype)s, %(md5sum)s, "
            "%(description)s, %(comments)s, %(liquibase)s, %(contexts)s, %(labels)s, %(deployment_id)s)",
            values,
        )
    return order


def redact(text: str, conninfo: str) -> str:
    """Return `text` with the password of `conninfo` (URI or key=value form) replaced by `***`."""
    password = _password_of(conninfo)
    if password:
        from urllib.parse import quote

        for form in {password, quote(password, safe="")}:
            text = text.replace(form, "***")
    return text


def _password_of(conninfo: str) -> str | None:
    from urllib.parse import unquote, urlsplit

    if "://" in conninfo:
        try:
            return unquote(urlsplit(conninfo).password or "") or None
        except ValueError:
            return None
    match = re.search(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", conninfo)
    if match is None:
        return None
    value = match.group(1)
    return value[1:-1] if value.startswith("'") else value


# ---------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Apply a changelog from the command line; return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m homunculy_nb.migrations",
        description="Apply a Liquibase formatted-SQL changelog (master XML, SQL file or folder of .sql "
        "files) to the PostgreSQL database in $DATABASE_URI.",
    )
    parser.add_argument("changelog", help="master XML changelog, formatted SQL file, or folder of .sql files")
    parser.add_argument("--database-uri", help="postgresql://user:password@host:port/db (default: $DATABASE_URI)")
    parser.add_argument("--contexts", help="comma-separated active contexts (default: run every change set)")
    parser.add_argument("--labels", help="label expression a change set's labels must match")
    parser.add_argument("--lock-timeout", type=float, default=300.0, help="seconds to wait for the changelog lock")
    arguments = parser.parse_args(argv)

    conninfo = arguments.database_uri or os.environ.get("DATABASE_URI")
    if not conninfo:
        print("error: no database given. Set DATABASE_URI=postgresql://user:password@host:port/db "
              "or pass --database-uri.", file=sys.stderr)
        return 2

    contexts = [name for name in arguments.contexts.split(",") if name.strip()] if arguments.contexts else None

    def report(result: AppliedChangeSet) -> None:
        detail = f" ({result.reason})" if result.reason else f" in {result.duration_s:.3f} s"
        print(f"{result.exec_type:<8} {result.label}{detail}", flush=True)

    try:
        results = apply_changelog(
            arguments.changelog, conninfo, contexts=contexts, labels=arguments.labels,
            lock_timeout=arguments.lock_timeout, on_result=report,
        )
    except MigrationError as exc:
        print(f"error: {redact(str(exc), conninfo)}", file=sys.stderr)
        return 1

    ran = sum(result.exec_type in ("EXECUTED", "RERAN") for result in results)
    print(f"Done: {ran} change set(s) applied, {len(results) - ran} skipped or failed.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
