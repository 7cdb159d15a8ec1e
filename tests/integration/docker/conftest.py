"""Fixtures for tests on a real Docker engine.

No registry is reachable, so the base image is made here: `docker import` of a root file system holding
the static busybox binary from Debian's busybox-static package. Images stay on the engine between runs
(importing again is skipped); containers, networks and volumes are removed by each test's stack fixture.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
import textwrap
import uuid
from pathlib import Path

import pytest

from homunculy_nb.runtimes import docker as docker_runtime

BASE_IMAGE = "homunculy-nb-test/busybox:1"
HTTPD_IMAGE = "homunculy-nb-test/httpd:1"

BUSYBOX_APPLETS = ["sh", "httpd", "wget", "cat", "echo", "sleep", "ls", "env", "nc", "true", "false", "grep", "mkdir"]


def _busybox_root_tar() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        pytest.fail("busybox is missing. Install it with: bash scripts/system-deps.sh docker")

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if name == "tmp" else 0o755
            archive.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))

        for folder in ("bin", "etc", "tmp", "www", "root"):
            add_dir(folder)
        add_file("bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in BUSYBOX_APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            archive.addfile(info)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file("etc/group", b"root:x:0:\n")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def engine():
    try:
        client = docker_runtime.engine_client()
    except Exception as exc:  # noqa: BLE001 - the message is the point
        pytest.fail(f"These tests need a Docker engine: {exc}. Run: bash scripts/system-deps.sh docker")
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(engine) -> str:
    """A busybox image made without a registry."""
    import docker

    try:
        engine.inspect_image(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = BASE_IMAGE.split(":")
        engine.import_image_from_data(_busybox_root_tar(), repository=repository, tag=tag)
    return BASE_IMAGE


@pytest.fixture(scope="session")
def httpd_context(tmp_path_factory, base_image) -> Path:
    """A build context for an HTTP server image with a HEALTHCHECK, FROM the busybox image."""
    context = tmp_path_factory.mktemp("httpd-image")
    (context / "index.html").write_text("hello from httpd\n")
    (context / "Dockerfile").write_text(textwrap.dedent(f"""\
        FROM {base_image}
        ARG GREETING=unset
        COPY index.html /www/index.html
        RUN echo "$GREETING" > /www/greeting.txt
        HEALTHCHECK --interval=1s --timeout=3s --retries=30 CMD wget -q -O /dev/null http://127.0.0.1:80/index.html || exit 1
        EXPOSE 80
        CMD ["httpd", "-f", "-v", "-p", "80", "-h", "/www"]
    """))
    yield context
    shutil.rmtree(context, ignore_errors=True)


@pytest.fixture(scope="session")
def httpd_image(engine, httpd_context) -> str:
    list(engine.build(path=str(httpd_context), tag=HTTPD_IMAGE, rm=True, decode=True))
    return HTTPD_IMAGE


@pytest.fixture
def stack_name():
    """A unique stack name; everything labelled with it is removed afterwards, volumes and images included."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    docker_runtime.remove_stack(name, volumes=True, images=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return os.environ


# -- a PostgreSQL image from the machine's PostgreSQL 15 --------------------------------------------------

POSTGRES_IMAGE = "homunculy-nb-test/postgres:15"
PG_ROOT = Path("/usr/lib/postgresql/15")
PG_PROGRAMS = ["postgres", "initdb", "pg_ctl", "psql", "pg_isready"]
PG_UID = 999

# Does what the official image's entrypoint does for a fresh data directory: a superuser with the given
# password, password authentication over TCP, the POSTGRES_DB database, initialisation on a socket only.
PG_ENTRYPOINT = """#!/bin/sh
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s\\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-local=trust \\
    --auth-host=scram-sha-256 -E UTF8 --locale=C >/dev/null
  rm /tmp/pwfile
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$POSTGRES_DB" != "postgres" ]; then
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \\"$POSTGRES_DB\\""
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "initialised $PGDATA"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
"""


def _shared_libraries(paths: list[Path]) -> set[Path]:
    import subprocess

    found: set[Path] = set()
    for path in paths:
        output = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
        for line in output.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                found.add(Path(parts[2]))
            elif parts and parts[0].startswith("/"):
                found.add(Path(parts[0]))
    return found


def _postgres_root_tar() -> bytes:
    if not (PG_ROOT / "bin" / "postgres").is_file():
        pytest.fail("PostgreSQL 15 is missing. Install it with: bash scripts/system-deps.sh postgres")

    programs = [PG_ROOT / "bin" / name for name in PG_PROGRAMS]
    modules = [path for path in (PG_ROOT / "lib").glob("*.so") if "llvmjit" not in path.name]
    files = set(programs) | set(modules) | _shared_libraries(programs + modules)
    share = Path("/usr/share/postgresql/15")
    files |= {path for path in share.rglob("*") if path.is_file() and "man" not in path.parts}
    files |= {Path("/usr/share/zoneinfo/UTC"), Path("/usr/share/zoneinfo/Etc/UTC")}

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        # Parent folders first: ones the archive leaves out would not be readable by the postgres user.
        parents = {parent for path in files for parent in path.parents if str(parent) != "/"}
        parents |= {Path("/usr/local/bin"), Path("/usr/local"), Path("/usr"), Path("/bin"), Path("/var"),
                    Path("/var/lib"), Path("/var/run")}
        for folder in sorted(parents, key=lambda p: len(p.parts)):
            info = tarfile.TarInfo(str(folder).lstrip("/"))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        # Symlinked libraries are stored as files under the name the programs look for.
        for path in sorted(files):
            archive.add(str(path.resolve()), arcname=str(path).lstrip("/"), recursive=False)
        archive.add("/bin/busybox", arcname="bin/busybox")
        for applet in ["sh", "cat", "echo", "rm", "printf", "sleep", "ls", "mkdir", "env"]:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            archive.addfile(info)

        def add_dir(name: str, uid: int = 0, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            info.uid = info.gid = uid
            archive.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))

        add_dir("tmp", mode=0o1777)
        add_dir("etc")
        add_dir("var/lib/postgresql", PG_UID, 0o755)
        add_dir("var/lib/postgresql/data", PG_UID, 0o700)
        add_dir("var/run/postgresql", PG_UID, 0o775)
        add_file("etc/passwd", f"root:x:0:0:root:/root:/bin/sh\npostgres:x:{PG_UID}:{PG_UID}::/var/lib/postgresql:/bin/sh\n".encode())
        add_file("etc/group", f"root:x:0:\npostgres:x:{PG_UID}:\n".encode())
        add_file("usr/local/bin/docker-entrypoint.sh", PG_ENTRYPOINT.encode(), 0o755)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def postgres_image(engine) -> str:
    """A stand-in for the official postgres image (no registry here), built from the machine's PostgreSQL 15."""
    import docker

    try:
        engine.inspect_image(POSTGRES_IMAGE)
    except docker.errors.ImageNotFound:
        repository, tag = POSTGRES_IMAGE.split(":")
        changes = [
            f"USER {PG_UID}",
            f"ENV PATH={PG_ROOT}/bin:/usr/bin:/bin",
            "ENV PGDATA=/var/lib/postgresql/data",
            "ENV TZ=UTC",
            'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]',
            "EXPOSE 5432",
        ]
        engine.import_image_from_data(_postgres_root_tar(), repository=repository, tag=tag, changes=changes)
    return POSTGRES_IMAGE
