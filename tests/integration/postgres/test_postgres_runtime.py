"""PostgresRuntime against the machine's real PostgreSQL binaries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import psycopg
import pytest

from homunculy_nb import _loop
from homunculy_nb.errors import PortInUseError, StartupError
from homunculy_nb.runtimes.postgres import PostgresRuntime

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"


def test_declared_databases_exist_and_probe_passes(make_launch, start, connect):
    server = start(make_launch(databases=["orders", "Mixed-Case"]))

    with connect(server) as connection:
        names = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
    assert {"orders", "Mixed-Case"} <= names
    assert _loop.run(server.probe(), timeout=60) is True


def test_probe_fails_after_stop(make_launch, start):
    server = start(make_launch())

    assert _loop.run(server.stop(), timeout=60) == 0
    assert _loop.run(server.probe(), timeout=60) is False


def test_wrong_password_is_rejected(make_launch, start, connect):
    server = start(make_launch())

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(server, password="wrong")


def test_listens_on_loopback_only_with_scram(make_launch, start, connect):
    server = start(make_launch())

    with connect(server) as connection:
        listen = connection.execute("SHOW listen_addresses").fetchone()[0]
        verifier = connection.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = current_user"
        ).fetchone()[0]
    assert listen == "127.0.0.1"
    assert verifier.startswith("SCRAM-SHA-256$")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_caller_gets_unprivileged_server(make_launch, start):
    server = start(make_launch())

    server_uid = psutil.Process(server.pid).uids().real
    assert server_uid != 0
    assert server.data_dir.stat().st_uid == server_uid
    assert server.data_dir.stat().st_mode & 0o777 == 0o700


def test_works_with_locale_unset_from_a_deep_directory(make_launch, start, connect, workdir, monkeypatch):
    for variable in ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES"):
        monkeypatch.delenv(variable, raising=False)
    deep = workdir.joinpath(*["a-rather-long-directory-name"] * 8)
    deep.mkdir(parents=True)
    # The caller's working directory: deep, and closed to the server's OS user.
    private_cwd = deep / "private"
    private_cwd.mkdir(mode=0o700)
    monkeypatch.chdir(private_cwd)

    server = start(make_launch(data_dir=deep / "data"))

    with connect(server) as connection:
        encoding = connection.execute("SHOW server_encoding").fetchone()[0]
        ctype = connection.execute("SELECT datctype FROM pg_database WHERE datname = 'app'").fetchone()[0]
    assert len(str(deep)) > 107  # longer than a Unix socket path may be
    assert encoding == "UTF8"
    assert ctype in ("C.UTF-8", "C")


def test_server_log_lines_reach_on_output(make_launch, start):
    output: list[str] = []
    start(make_launch(output=output))

    assert any("database system is ready to accept connections" in line for line in output)


def test_stop_removes_non_persistent_dirs(make_launch, start):
    server = start(make_launch(persistent=False))
    assert server.data_dir.is_dir()

    _loop.run(server.stop(), timeout=60)

    assert not server.data_dir.exists()
    assert not server.socket_dir.exists()


def test_non_persistent_cluster_in_memory_root(make_launch, template_cache, workdir):
    memory_root = workdir / "ram"
    memory_root.mkdir()
    runtime = PostgresRuntime(template_cache=template_cache, memory_root=memory_root)
    launch = make_launch(persistent=False)

    server = _loop.run(runtime.start(launch), timeout=120)
    try:
        assert server.data_dir.parent == memory_root
        assert not Path(launch.options["data_dir"]).exists()
    finally:
        _loop.run(server.stop(), timeout=60)
    assert list(memory_root.iterdir()) == []


def test_failed_start_leaves_nothing_in_memory_root(make_launch, template_cache, workdir):
    memory_root = workdir / "ram"
    memory_root.mkdir()
    runtime = PostgresRuntime(template_cache=template_cache, memory_root=memory_root)

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(PortInUseError):
            _loop.run(runtime.start(make_launch(port=holder.getsockname()[1])), timeout=120)

    assert list(memory_root.iterdir()) == []


def test_persistent_data_survives_and_new_password_applies(make_launch, start, connect, workdir):
    data_dir = workdir / "kept"
    first = start(make_launch(data_dir=data_dir, persistent=True, databases=["app"]))
    with connect(first, dbname="app") as connection:
        connection.execute("CREATE TABLE note (body text)")
        connection.execute("INSERT INTO note VALUES ('kept')")
    _loop.run(first.stop(), timeout=60)
    assert (data_dir / "PG_VERSION").is_file()

    output: list[str] = []
    second = start(make_launch(data_dir=data_dir, persistent=True, password="a new one", output=output))

    with connect(second, password="a new one", dbname="app") as connection:
        assert connection.execute("SELECT body FROM note").fetchone()[0] == "kept"
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(second, password=PASSWORD)
    assert any("existing cluster reused" in line for line in output)


def test_second_new_cluster_is_copied_from_the_template(make_launch, start):
    start(make_launch(name="first"))
    output: list[str] = []

    start(make_launch(name="second", output=output))

    assert any("copied from the template" in line for line in output)


def test_template_holds_no_password_of_an_earlier_cluster(make_launch, start, connect):
    start(make_launch(name="first", password="first password"))
    second = start(make_launch(name="second", password="second password"))

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(second, password="first password")


def test_port_taken_by_another_process_is_reported(make_launch, runtime):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        launch = make_launch(port=port)

        with pytest.raises(PortInUseError) as caught:
            _loop.run(runtime.start(launch), timeout=120)

    assert caught.value.port == port
    assert caught.value.resource == "pg"
    assert not Path(launch.options["data_dir"]).exists()


def test_data_dir_in_use_is_rejected(make_launch, start, runtime):
    server = start(make_launch(persistent=True))

    with pytest.raises(StartupError, match=f"in use by the PostgreSQL server with pid {server.pid}"):
        _loop.run(runtime.start(make_launch(name="other", data_dir=server.data_dir, persistent=True)), timeout=120)


_ORPHAN_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from homunculy_nb import _loop
    from homunculy_nb.runtimes.base import Launch
    from homunculy_nb.runtimes.postgres import PostgresRuntime

    launch = Launch(
        name="orphan", run_dir=Path(sys.argv[1]), ports={"tcp": int(sys.argv[2])},
        options={"user": "postgres", "password": "pw", "databases": [], "data_dir": Path(sys.argv[1]) / "data",
                 "persistent": False},
    )
    runtime = PostgresRuntime(template_cache=Path(sys.argv[3]), memory_root=Path(sys.argv[4]))
    server = _loop.run(runtime.start(launch), timeout=120)
    print(json.dumps(server.state_record()), flush=True)
    time.sleep(600)
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("recorded", ["full record", "data_dir only"])
def test_orphan_stopped_after_sigkill(workdir, template_cache, recorded):
    run_dir = workdir / "orphan"
    run_dir.mkdir()
    memory_root = workdir / "ram"
    memory_root.mkdir()
    starter = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(run_dir), str(_free_port()), str(template_cache),
         str(memory_root)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        record = json.loads(starter.stdout.readline())
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=30)
        starter.stdout.close()

    if recorded == "data_dir only":
        orphan_record = {"data_dir": record["data_dir"], "socket_dir": record["socket_dir"], "persistent": False}
    else:
        orphan_record = record
    try:
        assert psutil.pid_exists(record["pid"])  # the server outlived the process that started it

        assert PostgresRuntime.stop_orphan(orphan_record) is True

        assert not _alive(record["pid"])
        assert not Path(record["data_dir"]).exists()
        assert list(memory_root.iterdir()) == []
    finally:
        if _alive(record["pid"]):
            os.killpg(record["pid"], signal.SIGKILL)


def test_orphan_with_reused_pid_left_alone():
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        record = {"pid": bystander.pid, "create_time": psutil.Process(bystander.pid).create_time() - 100,
                  "persistent": True}

        assert PostgresRuntime.stop_orphan(record) is False
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=30)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_password_stays_out_of_command_lines_and_logs(make_launch, start, connect):
    output: list[str] = []
    server = start(make_launch(output=output))
    with connect(server) as connection:
        connection.execute("SELECT 1")

    server_process = psutil.Process(server.pid)
    command_lines = []
    for process in [server_process, *server_process.children(recursive=True)]:
        try:
            command_lines.append(" ".join(process.cmdline()))
        except psutil.NoSuchProcess:
            continue  # a backend that ended meanwhile
    assert command_lines
    assert all(PASSWORD not in line for line in command_lines)
    assert all(PASSWORD not in line for line in output)
    assert PASSWORD not in repr(server)
    assert PASSWORD not in json.dumps(server.state_record())
