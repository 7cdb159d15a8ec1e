"""Fixtures that start real PostgreSQL servers on free ports and stop and remove all of them afterwards."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homunculy_nb import _loop
from homunculy_nb.runtimes.base import Launch
from homunculy_nb.runtimes.postgres import PostgresRuntime, PostgresServer

PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def template_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("postgres-templates")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def runtime(template_cache: Path) -> PostgresRuntime:
    """A runtime that keeps every cluster in its `data_dir`, so the tests see the data on disk."""
    return PostgresRuntime(template_cache=template_cache, memory_root=False)


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private (0700) directory for data directories, outside pytest's basetemp.

    NOTE: pytest resets its basetemp root to mode 0700 at each session start, and that also clears the
    ACL mask that lets the server's OS user through. A concurrent session as root would then break
    servers whose data directories live there.
    """
    path = Path(tempfile.mkdtemp(prefix="hnb-pg-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_launch(workdir: Path) -> Iterator[Callable[..., Launch]]:
    """Build a Launch for a server named `name` on a free port; records each launch's output lines."""
    data_dirs: list[Path] = []

    def build(name: str = "pg", output: list[str] | None = None, **options) -> Launch:
        options.setdefault("user", "postgres")
        options.setdefault("password", PASSWORD)
        options.setdefault("databases", ["app"])
        options.setdefault("data_dir", workdir / name / "data")
        options.setdefault("persistent", False)
        data_dirs.append(Path(options["data_dir"]))
        sink = output if output is not None else []
        return Launch(
            name=name,
            run_dir=workdir / name,
            ports={"tcp": options.pop("port", None) or free_port()},
            options=options,
            on_output=lambda stream, line: sink.append(line),
        )

    yield build
    for data_dir in data_dirs:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def start(runtime: PostgresRuntime) -> Iterator[Callable[[Launch], PostgresServer]]:
    """Start a server on the package's loop; every server still running at teardown is stopped."""
    started: list[PostgresServer] = []

    def start_server(launch: Launch) -> PostgresServer:
        server = _loop.run(runtime.start(launch), timeout=120)
        started.append(server)
        return server

    yield start_server
    for server in started:
        _loop.run(server.stop(timeout=10), timeout=60)


@pytest.fixture
def connect() -> Callable[..., object]:
    """Open an autocommit psycopg connection to a server over TCP."""
    import psycopg

    def open_connection(server: PostgresServer, password: str = PASSWORD, dbname: str = "postgres"):
        return psycopg.connect(
            host=server.host, port=server.port, user=server.user, password=password, dbname=dbname,
            connect_timeout=10, autocommit=True,
        )

    return open_connection


@pytest.fixture(scope="session")
def migration_server(template_cache: Path) -> Iterator[PostgresServer]:
    """One server shared by the migration tests; each test gets its own database."""
    workdir = Path(tempfile.mkdtemp(prefix="hnb-pg-migrations-"))
    launch = Launch(
        name="migrations-pg",
        run_dir=workdir,
        ports={"tcp": free_port()},
        options={"user": "postgres", "password": PASSWORD, "databases": [], "data_dir": workdir / "data",
                 "persistent": False},
    )
    server = _loop.run(PostgresRuntime(template_cache=template_cache).start(launch), timeout=120)
    yield server
    _loop.run(server.stop(timeout=10), timeout=60)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def database_uri(migration_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URI of a new, empty database on the shared server; the database is dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = "m_" + "".join(char if char.isalnum() else "_" for char in request.node.name)[:50].lower()
    admin = psycopg.connect(
        host=migration_server.host, port=migration_server.port, user="postgres", password=PASSWORD,
        dbname="postgres", autocommit=True,
    )
    with admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    quoted_password = PASSWORD.replace(" ", "%20")
    yield f"postgresql://postgres:{quoted_password}@{migration_server.host}:{migration_server.port}/{name}"
    with psycopg.connect(
        host=migration_server.host, port=migration_server.port, user="postgres", password=PASSWORD,
        dbname="postgres", autocommit=True,
    ) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
