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
    """A unique stack name; everything labelled with it is removed afterwards, volumes included."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    docker_runtime.remove_stack(name, volumes=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    return os.environ
