"""PostgreSQL servers run from the machine's own binaries (`initdb`, `postgres`).

`PostgresRuntime.start()` prepares a data directory, runs `postgres` as a child process in its own
session and waits for the readiness mark in postmaster.pid that `pg_ctl -w` waits for. It then sets the
superuser's password and creates the declared databases. Stopping sends the signals `pg_ctl stop` sends
(fast shutdown, then immediate shutdown), then SIGKILL. Running `postgres` as a child instead of through
`pg_ctl start` gives the orchestrator its exit code and its log lines on a pipe.

The server listens on `launch.host` over TCP with scram-sha-256 password authentication. It also listens
on a Unix socket with trust authentication, in a short private directory under /tmp that only the
server's OS user and root can open.

When the caller is root, the server runs as an unprivileged OS user that owns the data directory:
`postgres` when it exists, else a system user `homunculy-nb` created on first use. Directories above the
data directory that this user cannot search get a POSIX ACL entry granting it search permission only.

New clusters are copied from a template cluster that `initdb` builds once per PostgreSQL version, OS user,
superuser name and locale, kept in the user's cache directory. Copying takes a fraction of an `initdb` run.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import functools
import logging
import os
import pwd
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from homunculy_nb.errors import (
    ConfigurationError,
    PortInUseError,
    ResourceError,
    RuntimeUnavailableError,
    StartupError,
)
from homunculy_nb.runtimes.base import Launch, OutputCallback, Running, Runtime

__all__ = ["INSTALL_HINT", "PostgresRuntime", "PostgresServer", "find_postgres_bin"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "Install the PostgreSQL server with `apt-get install postgresql` (Debian, Ubuntu)."

# The OS user created to run servers when the caller is root and no `postgres` user exists.
SERVER_OS_USER = "homunculy-nb"

# Bumped when the way templates are built changes, so stale templates are not reused.
TEMPLATE_FORMAT = 2

# Settings for clusters whose data is removed at stop anyway: durability buys nothing there.
EPHEMERAL_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}

# The status line `postgres` writes into postmaster.pid once it accepts connections (PostgreSQL >= 10).
_READY_STATUS = "ready"
_PIDFILE_STATUS_LINE = 7

_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF
_ACL_SEARCH = 0o1

_LOG_TAIL_LINES = 20


# ---------------------------------------------------------------------------------------------------
# Binaries, OS user, locale


def find_postgres_bin(name: str) -> Path:
    """Return the path of PostgreSQL program `name`, preferring the newest /usr/lib/postgresql/N/bin.

    Raises `RuntimeUnavailableError` naming the install command when the program is not found.
    """
    for bin_dir in _versioned_bin_dirs():
        candidate = bin_dir / name
        if os.access(candidate, os.X_OK):
            return candidate

    found = shutil.which(name)
    if found:
        return Path(found)

    raise RuntimeUnavailableError(
        f"The PostgreSQL program `{name}` was not found in /usr/lib/postgresql/*/bin or on PATH. "
        f"{INSTALL_HINT}"
    )


def _versioned_bin_dirs() -> list[Path]:
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return []

    versions = [entry for entry in root.iterdir() if re.fullmatch(r"\d+(\.\d+)?", entry.name)]
    versions.sort(key=lambda entry: tuple(int(part) for part in entry.name.split(".")), reverse=True)
    return [entry / "bin" for entry in versions]


@functools.lru_cache(maxsize=8)
def server_major_version(postgres: Path) -> str:
    """Return the major version of the `postgres` binary, such as "15"."""
    output = subprocess.run(
        [str(postgres), "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", output)
    if match is None:
        raise RuntimeUnavailableError(f"Could not read a version from `{postgres} --version`: {output!r}.")
    return match.group(1)


@dataclass(frozen=True)
class ServerAccount:
    """The OS user a server runs as: the caller itself, or an unprivileged user when the caller is root."""

    name: str
    uid: int
    gid: int

    @property
    def is_caller(self) -> bool:
        return self.uid == os.geteuid()

    def subprocess_options(self) -> dict[str, Any]:
        """Return the `subprocess` keyword arguments that run a child as this user."""
        if self.is_caller:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


_account_lock = threading.Lock()


def server_account() -> ServerAccount:
    """Return the OS user that runs servers, creating the system user `homunculy-nb` when needed.

    PostgreSQL refuses to run as root, so a root caller gets `postgres` (the Debian package creates it)
    or `homunculy-nb`.
    """
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)

    with _account_lock:
        for name in ("postgres", SERVER_OS_USER):
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return ServerAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
        return _create_server_user()


def _create_server_user() -> ServerAccount:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise RuntimeUnavailableError(
            "PostgreSQL cannot run as root, and neither the OS user `postgres` nor `useradd` to create "
            f"`{SERVER_OS_USER}` exists. Create an unprivileged user named `{SERVER_OS_USER}`."
        )
    logger.info("Creating the system user `%s` to run PostgreSQL servers", SERVER_OS_USER)
    subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", SERVER_OS_USER],
        check=True, capture_output=True, timeout=60,
    )
    entry = pwd.getpwnam(SERVER_OS_USER)
    return ServerAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


@functools.lru_cache(maxsize=1)
def cluster_locale() -> str:
    """Return "C.UTF-8" when the C library provides it (glibc >= 2.35 or an installed locale), else "C"."""
    for name in ("C.utf8", "C.UTF-8"):
        if Path("/usr/lib/locale", name).exists():
            return "C.UTF-8"

    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):
        libc = ""
    match = re.fullmatch(r"glibc (\d+)\.(\d+).*", libc)
    if match and (int(match.group(1)), int(match.group(2))) >= (2, 35):
        return "C.UTF-8"
    return "C"


def _child_env(locale: str) -> dict[str, str]:
    # A fixed environment: the caller's LANG/LC_* (set, unset or broken) must not change the cluster.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": locale, "LANG": locale}


# ---------------------------------------------------------------------------------------------------
# Directory access for the server's OS user


def _can_search(path: Path, account: ServerAccount) -> bool:
    """Tell whether `account` can reach `path` (search permission on it and every ancestor)."""
    if account.is_caller:
        return os.access(path, os.X_OK)

    result = subprocess.run(
        ["test", "-x", str(path)], env=_child_env("C"), cwd="/", timeout=30,
        **account.subprocess_options(),
    )
    return result.returncode == 0


def grant_search(directory: Path, account: ServerAccount) -> list[Path]:
    """Let `account` search `directory` and its ancestors, adding a POSIX ACL entry where it cannot.

    Returns the directories that got an entry. Raises `ResourceError` naming the directory when the
    file system does not support ACLs.
    """
    if _can_search(directory, account):
        return []

    granted = []
    for ancestor in [*reversed(directory.parents), directory]:
        if _can_search(ancestor, account):
            continue
        _add_acl_search_entry(ancestor, account.uid)
        granted.append(ancestor)

    logger.info(
        "Granted OS user `%s` search permission (ACL) on %s so PostgreSQL can reach its data directory",
        account.name, ", ".join(str(path) for path in granted),
    )
    return granted


def _add_acl_search_entry(path: Path, uid: int) -> None:
    entries = _read_acl(path)

    user_perm = entries.pop((_ACL_USER, uid), 0) | _ACL_SEARCH
    entries[(_ACL_USER, uid)] = user_perm
    # The mask caps every group-class entry, so it is their union: nothing else gains a permission.
    group_class = [perm for (tag, _), perm in entries.items() if tag in (_ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP)]
    entries[(_ACL_MASK, _ACL_UNDEFINED_ID)] = functools.reduce(lambda a, b: a | b, group_class, 0)

    packed = struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )
    try:
        os.setxattr(path, _ACL_XATTR, packed)
    except OSError as exc:
        raise ResourceError(
            f"Attempted to let the PostgreSQL OS user search {path}, but setting an ACL failed ({exc}). "
            f"Run `chmod o+x {path}`, or put the stack's state directory where that user can reach it."
        ) from exc


def _read_acl(path: Path) -> dict[tuple[int, int], int]:
    try:
        raw = os.getxattr(path, _ACL_XATTR)
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
        raw = b""

    if len(raw) >= 4:
        return {(tag, ident): perm for tag, perm, ident in struct.iter_unpack("<HHI", raw[4:])}

    # No extended ACL: the minimal ACL is the mode bits.
    mode = path.stat().st_mode
    return {
        (_ACL_USER_OBJ, _ACL_UNDEFINED_ID): (mode >> 6) & 0o7,
        (_ACL_GROUP_OBJ, _ACL_UNDEFINED_ID): (mode >> 3) & 0o7,
        (_ACL_OTHER, _ACL_UNDEFINED_ID): mode & 0o7,
    }


def _chown_tree(root: Path, account: ServerAccount) -> None:
    if account.is_caller:
        return
    os.chown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)


# ---------------------------------------------------------------------------------------------------
# Data directory: reuse, template copy or initdb


def default_memory_root(min_free: int = 1 << 30) -> Path | None:
    """Return /dev/shm when it is a writable folder with `min_free` bytes free, else None."""
    path = Path("/dev/shm")
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    if free < min_free or not os.access(path, os.W_OK | os.X_OK):
        return None
    return path


def default_template_cache() -> Path:
    """Return the folder for template clusters: $XDG_CACHE_HOME/homunculy-nb/postgres-templates."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "homunculy-nb" / "postgres-templates"


@dataclass(frozen=True)
class _ClusterSpec:
    postgres: Path
    initdb: Path
    major: str
    account: ServerAccount
    superuser: str
    locale: str

    @property
    def template_key(self) -> str:
        key = f"v{TEMPLATE_FORMAT}-pg{self.major}-{self.postgres.parent}-{self.account.name}-{self.superuser}-{self.locale}"
        # A folder name: no separators, so a superuser name such as "../x" stays inside the cache.
        return re.sub(r"[^A-Za-z0-9.-]+", "_", key).strip("_.")


async def _run(command: list[str], account: ServerAccount, locale: str, what: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=_child_env(locale), cwd="/", **account.subprocess_options(),
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        text = output.decode("utf-8", "replace").strip()
        raise StartupError(f"{what} failed with exit code {process.returncode}:\n{text}")


async def _initdb(spec: _ClusterSpec, data_dir: Path) -> None:
    # No password here: `start()` sets it over the Unix socket as a SCRAM verifier, so neither a
    # command line nor a file ever carries it, and a template never contains a previous password.
    command = [
        str(spec.initdb), "--pgdata", str(data_dir), "--username", spec.superuser,
        "--encoding", "UTF8", "--locale", spec.locale,
        "--auth-local", "trust", "--auth-host", "scram-sha-256",
        # 1 MB WAL segments instead of 16 MB: a new cluster is 40% smaller to write and to copy.
        "--wal-segsize", "1",
        "--no-sync", "--no-instructions",
    ]
    await _run(command, spec.account, spec.locale, f"`initdb` for {data_dir}")


async def _copy_tree(source: Path, target: Path, spec: _ClusterSpec) -> None:
    """Copy the contents of `source` into the existing directory `target`, keeping modes and owners."""
    # `cp -a`, run by the caller, keeps the server user's ownership when the caller is root, and is
    # several times faster than shutil.copytree for a cluster's ~1000 files.
    await _run(["cp", "-a", f"{source}/.", str(target)], _caller_account(), spec.locale, f"Copying {source}")


@functools.lru_cache(maxsize=1)
def _caller_account() -> ServerAccount:
    entry = pwd.getpwuid(os.geteuid())
    return ServerAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)


async def _create_cluster(spec: _ClusterSpec, data_dir: Path, template_cache: Path | None) -> str:
    """Fill the missing or empty `data_dir` with a new cluster and return how: "template" or "initdb"."""
    template = template_cache / spec.template_key if template_cache else None

    data_dir.mkdir(mode=0o700, exist_ok=True)
    data_dir.chmod(0o700)
    await asyncio.to_thread(_chown_tree, data_dir, spec.account)

    try:
        if template is not None and (template / "PG_VERSION").is_file():
            await _copy_tree(template, data_dir, spec)
            return "template"
        await _initdb(spec, data_dir)
    except BaseException:
        # Half a cluster would pass for a usable one at the next start (PG_VERSION comes early).
        shutil.rmtree(data_dir, ignore_errors=True)
        raise

    if template is not None:
        await _store_template(data_dir, template, spec)
    return "initdb"


async def _store_template(data_dir: Path, template: Path, spec: _ClusterSpec) -> None:
    # Copy under a temporary name, then rename, so a concurrent start never copies half a template.
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{template.name}-", dir=template.parent))
        (staging / "cluster").mkdir()
        await _copy_tree(data_dir, staging / "cluster", spec)
        try:
            os.rename(staging / "cluster", template)
        except OSError:
            logger.debug("Template %s appeared meanwhile; keeping the existing one", template)
        shutil.rmtree(staging, ignore_errors=True)
    except (OSError, StartupError) as exc:
        logger.warning("Could not store the PostgreSQL template cluster in %s: %s", template, exc)


def _live_postmaster_pid(data_dir: Path) -> int | None:
    """Return the pid in `data_dir`/postmaster.pid when a `postgres` process with that pid runs."""
    import psutil

    try:
        first_line = (data_dir / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first_line.strip())
    except (OSError, IndexError, ValueError):
        return None
    try:
        process = psutil.Process(pid)
        # A stale file after a reboot may name a pid that now belongs to another program.
        if process.status() == psutil.STATUS_ZOMBIE or process.name() not in ("postgres", "postmaster"):
            return None
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        pass
    return pid


async def _prepare_data_dir(
    spec: _ClusterSpec, data_dir: Path, persistent: bool, template_cache: Path | None, name: str,
) -> str:
    """Make `data_dir` hold a cluster for `spec` and return "reused", "template" or "initdb"."""
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if not spec.account.is_caller:
        await asyncio.to_thread(grant_search, data_dir.parent, spec.account)

    running_pid = _live_postmaster_pid(data_dir)
    if running_pid is not None:
        raise StartupError(
            f"The data directory {data_dir} of `{name}` is in use by the PostgreSQL server with pid "
            f"{running_pid}. Stop that server (`homunculy-nb down`) before starting `{name}` again.",
            resource=name,
        )

    if not persistent and data_dir.exists() and any(data_dir.iterdir()):
        # A leftover of a crashed run: the data of a non-persistent server is never reused.
        await asyncio.to_thread(shutil.rmtree, data_dir)

    if (data_dir / "PG_VERSION").is_file():
        found = (data_dir / "PG_VERSION").read_text().strip()
        if found != spec.major:
            raise StartupError(
                f"The data directory {data_dir} of `{name}` was created by PostgreSQL {found}, but the "
                f"installed server is PostgreSQL {spec.major}. Remove the directory (its data is lost) "
                f"with `stack.down(volumes=True)`, or install PostgreSQL {found}.",
                resource=name,
            )
        if data_dir.stat().st_uid != spec.account.uid:
            await asyncio.to_thread(_chown_tree, data_dir, spec.account)
        return "reused"

    if data_dir.exists():
        if any(data_dir.iterdir()):
            raise StartupError(
                f"The data directory {data_dir} of `{name}` is not empty and contains no PostgreSQL cluster. "
                "Empty it or choose another data directory.",
                resource=name,
            )

    return await _create_cluster(spec, data_dir, template_cache)


# ---------------------------------------------------------------------------------------------------
# Runtime


@dataclass(frozen=True)
class _Options:
    user: str
    password: str
    databases: tuple[str, ...]
    data_dir: Path
    persistent: bool
    port: int
    start_timeout: float

    @classmethod
    def from_launch(cls, launch: Launch) -> _Options:
        options = launch.options
        name = launch.name

        user = options.get("user", "postgres")
        if not isinstance(user, str) or not user:
            raise ConfigurationError(f"The superuser name of `{name}` must be a non-empty string, not {user!r}.")

        password = options.get("password")
        if not isinstance(password, str) or not password:
            raise ConfigurationError(
                f"`{name}` needs a non-empty password string in launch option `password` "
                "(the revealed value of its password parameter)."
            )

        databases = options.get("databases", [])
        if isinstance(databases, str) or not all(isinstance(db, str) and db for db in databases):
            raise ConfigurationError(f"The databases of `{name}` must be a list of non-empty names.")

        data_dir = options.get("data_dir")
        if data_dir is None:
            raise ConfigurationError(f"`{name}` needs launch option `data_dir` (the cluster's directory).")

        port = launch.ports.get("tcp")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ConfigurationError(f"`{name}` needs an allocated TCP port in `launch.ports['tcp']`, not {port!r}.")

        return cls(
            user=user,
            password=password,
            databases=tuple(databases),
            data_dir=Path(data_dir).absolute(),
            persistent=bool(options.get("persistent", False)),
            port=port,
            start_timeout=float(options.get("start_timeout", 60.0)),
        )


class PostgresRuntime(Runtime):
    """Starts PostgreSQL servers from the machine's binaries.

    `template_cache` is the folder for template clusters (`default_template_cache()` when omitted);
    pass `use_template=False` to run `initdb` for every new cluster.

    A non-persistent cluster goes to RAM, in a new folder under `memory_root` instead of
    `launch.options["data_dir"]`. The default is /dev/shm when it has 1 GiB free. Its data is removed
    at stop anyway, and writing a new cluster to RAM takes a fraction of the time a disk needs.
    Pass `memory_root=False` to keep every cluster in its `data_dir`.
    """

    def __init__(
        self,
        template_cache: Path | None = None,
        use_template: bool = True,
        memory_root: Path | bool | None = None,
    ) -> None:
        self.template_cache = (template_cache or default_template_cache()) if use_template else None
        if memory_root is None or memory_root is True:
            self.memory_root = default_memory_root()
        elif memory_root is False:
            self.memory_root = None
        else:
            self.memory_root = Path(memory_root)

    def __repr__(self) -> str:
        return (
            f"PostgresRuntime(template_cache={str(self.template_cache)!r}, "
            f"memory_root={str(self.memory_root) if self.memory_root else None!r})"
        )

    async def start(self, launch: Launch) -> PostgresServer:
        options = _Options.from_launch(launch)
        spec = await asyncio.to_thread(self._cluster_spec, options.user)

        in_memory = not options.persistent and self.memory_root is not None
        if in_memory:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", launch.name)[:40]
            memory_dir = Path(tempfile.mkdtemp(prefix=f"hnb-pg-{slug}-", dir=self.memory_root))
            options = dataclasses.replace(options, data_dir=memory_dir)

        prepared = False
        socket_dir = Path(tempfile.mkdtemp(prefix="hnb-pg-", dir="/tmp"))
        try:
            origin = await _prepare_data_dir(
                spec, options.data_dir, options.persistent, self.template_cache, launch.name
            )
            prepared = True
            launch.on_output("system", f"Data directory {options.data_dir} ({_ORIGIN_TEXT[origin]})")
            await asyncio.to_thread(_chown_tree, socket_dir, spec.account)
            if not spec.account.is_caller:
                # Checked again right before the start: a `chmod` since the first check (pytest resets
                # its temporary root to 0700 at each session start) clears the ACL mask.
                await asyncio.to_thread(grant_search, options.data_dir.parent, spec.account)
            process = await _spawn_postgres(spec, options, launch.host, socket_dir)
        except BaseException:
            shutil.rmtree(socket_dir, ignore_errors=True)
            # A data directory that failed its checks may belong to a running server: leave it alone.
            if (prepared or in_memory) and not options.persistent:
                shutil.rmtree(options.data_dir, ignore_errors=True)
            raise

        server = PostgresServer(launch.name, process, spec, options, launch.host, socket_dir, launch.on_output)
        try:
            await server._startup()
        except BaseException:
            await server.stop(timeout=5.0)
            raise

        logger.info(
            "PostgreSQL `%s` started with pid %s on %s:%s (data directory %s)",
            launch.name, process.pid, launch.host, options.port, options.data_dir,
        )
        return server

    @staticmethod
    def _cluster_spec(superuser: str) -> _ClusterSpec:
        postgres = find_postgres_bin("postgres")
        initdb = postgres.parent / "initdb"
        if not os.access(initdb, os.X_OK):
            initdb = find_postgres_bin("initdb")
        return _ClusterSpec(
            postgres=postgres,
            initdb=initdb,
            major=server_major_version(postgres),
            account=server_account(),
            superuser=superuser,
            locale=cluster_locale(),
        )

    @classmethod
    def stop_orphan(cls, record: dict[str, Any]) -> bool:
        """Stop a server left behind by a crashed process and remove its non-persistent data.

        The recorded pid counts only when that process still has the recorded start time, so a reused
        pid is never signalled. Without a matching pid, a record's `data_dir` alone finds the server
        through postmaster.pid, when a `postgres` process with that pid runs on that directory.
        """
        stopped = False
        pid = record.get("pid")
        if not (isinstance(pid, int) and _same_process(pid, record.get("create_time"))):
            pid = _postmaster_serving(Path(record["data_dir"])) if record.get("data_dir") else None

        if pid is not None:
            logger.info("Stopping the orphaned PostgreSQL server with pid %s", pid)
            _stop_foreign_postmaster(pid, timeout=float(record.get("stop_timeout", 10.0)))
            stopped = True

        if record.get("socket_dir"):
            shutil.rmtree(record["socket_dir"], ignore_errors=True)
        if record.get("data_dir") and not record.get("persistent", True):
            shutil.rmtree(record["data_dir"], ignore_errors=True)
        return stopped


_ORIGIN_TEXT = {
    "reused": "existing cluster reused",
    "template": "new cluster copied from the template",
    "initdb": "new cluster created by initdb",
}


async def _spawn_postgres(
    spec: _ClusterSpec, options: _Options, host: str, socket_dir: Path
) -> asyncio.subprocess.Process:
    settings = {
        "listen_addresses": host,
        "port": str(options.port),
        "unix_socket_directories": str(socket_dir),
        "unix_socket_permissions": "0700",
    }
    if not options.persistent:
        settings.update(EPHEMERAL_SETTINGS)

    command = [str(spec.postgres), "-D", str(options.data_dir)]
    for key, value in settings.items():
        command += ["-c", f"{key}={value}"]

    return await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(spec.locale),
        cwd="/",
        start_new_session=True,
        **spec.account.subprocess_options(),
    )


class PostgresServer(Running):
    """A running PostgreSQL server started by `PostgresRuntime`."""

    def __init__(
        self,
        name: str,
        process: asyncio.subprocess.Process,
        spec: _ClusterSpec,
        options: _Options,
        host: str,
        socket_dir: Path,
        on_output: OutputCallback,
    ) -> None:
        self.name = name
        self.pid = process.pid
        self.host = host
        self.port = options.port
        self.user = options.user
        self.data_dir = options.data_dir
        self.socket_dir = socket_dir
        self.persistent = options.persistent
        self._process = process
        self._spec = spec
        self._options = options
        self._on_output = on_output
        self._log_tail: collections.deque[str] = collections.deque(maxlen=_LOG_TAIL_LINES)
        self._create_time = _process_create_time(process.pid)
        self._readers = [
            asyncio.ensure_future(self._pump(process.stdout, "stdout")),
            asyncio.ensure_future(self._pump(process.stderr, "stderr")),
        ]
        self._exited = asyncio.ensure_future(self._watch())
        self._cleaned = False

    def __repr__(self) -> str:
        return (
            f"PostgresServer(name={self.name!r}, pid={self.pid}, address='{self.host}:{self.port}', "
            f"data_dir={str(self.data_dir)!r}, persistent={self.persistent})"
        )

    @property
    def returncode(self) -> int | None:
        return self._process.returncode

    def log_tail(self) -> list[str]:
        """Return the server's last log lines."""
        return list(self._log_tail)

    # -- lifecycle ----------------------------------------------------------------------------------

    async def _startup(self) -> None:
        await self._wait_ready()
        await self._configure()

    async def _wait_ready(self) -> None:
        # The same readiness test as `pg_ctl -w`: postmaster.pid carries our pid and the status "ready".
        deadline = time.monotonic() + self._options.start_timeout
        while True:
            if self._exited.done():
                raise self._startup_failure(f"exited with code {self._process.returncode} while starting")
            if _pidfile_ready(self.data_dir, self.pid):
                return
            if time.monotonic() > deadline:
                raise self._startup_failure(
                    f"did not accept connections within {self._options.start_timeout:g} s"
                )
            await asyncio.sleep(0.02)

    def _startup_failure(self, what: str) -> StartupError:
        tail = "\n".join(self._log_tail) or "(no log lines)"
        message = f"PostgreSQL `{self.name}` {what}. Last log lines:\n{tail}"
        if "could not bind" in tail and "Address already in use" in tail:
            return PortInUseError(
                f"Port {self.port} for `{self.name}` is in use by another process. Stop that process or "
                f"let the port be allocated (port=None).\n{tail}",
                resource=self.name, port=self.port, pid=_port_holder(self.port),
            )
        return StartupError(message, resource=self.name)

    async def _configure(self) -> None:
        """Set the superuser's password and create the declared databases, over the Unix socket."""
        import psycopg
        from psycopg import sql

        try:
            connection = await psycopg.AsyncConnection.connect(
                host=str(self.socket_dir), port=self.port, user=self.user, dbname="postgres",
                autocommit=True, connect_timeout=10,
            )
        except psycopg.OperationalError as exc:
            raise StartupError(
                f"Could not connect to PostgreSQL `{self.name}` as `{self.user}` over its Unix socket: "
                f"{exc}. When the data directory {self.data_dir} was created for another superuser, "
                "remove it with `stack.down(volumes=True)`.",
                resource=self.name,
            ) from exc

        async with connection:
            # The verifier is computed here, so the plain password never reaches the server or its log.
            verifier = connection.pgconn.encrypt_password(
                self._options.password.encode(), self.user.encode(), b"scram-sha-256"
            ).decode()
            await connection.execute(
                sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(sql.Identifier(self.user), sql.Literal(verifier))
            )

            cursor = await connection.execute("SELECT datname FROM pg_database")
            existing = {row[0] for row in await cursor.fetchall()}
            for database in self._options.databases:
                if database in existing:
                    continue
                await connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                self._on_output("system", f"Created database {database}")

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self._log_tail.append(line)
            try:
                self._on_output(name, line)
            except Exception:
                logger.exception("The output callback of `%s` failed", self.name)

    async def _watch(self) -> int:
        code = await self._process.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._cleanup()
        return code

    def _cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        shutil.rmtree(self.socket_dir, ignore_errors=True)
        if not self.persistent:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server: fast shutdown, then immediate shutdown, then SIGKILL to its process group."""
        steps = [
            # 1. Fast shutdown (what `pg_ctl stop -m fast` sends): roll back sessions, checkpoint, exit.
            (signal.SIGINT, timeout),
            # 2. Immediate shutdown (`pg_ctl stop -m immediate`): exit now; the next start runs recovery.
            (signal.SIGQUIT, 5.0),
            # 3. Kill the server and any backend still alive.
            (signal.SIGKILL, 5.0),
        ]
        for signum, wait_for in steps:
            if self._exited.done():
                break
            self._signal(signum)
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), wait_for)
            except asyncio.TimeoutError:
                logger.warning("PostgreSQL `%s` did not stop within %g s after %s", self.name, wait_for, signum.name)

        if not self._exited.done():
            return None
        code = self._exited.result()
        logger.info("PostgreSQL `%s` stopped with exit code %s", self.name, code)
        return code

    def _signal(self, signum: signal.Signals) -> None:
        try:
            if signum == signal.SIGKILL:
                os.killpg(self.pid, signum)
            else:
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    async def probe(self) -> bool:
        """Return True when three connections in a row over TCP, with the password, run `SELECT 1`."""
        import psycopg

        if self._exited.done():
            return False
        for _ in range(3):
            try:
                async with await psycopg.AsyncConnection.connect(
                    host=self.host, port=self.port, user=self.user, password=self._options.password,
                    dbname="postgres", connect_timeout=5,
                ) as connection:
                    await connection.execute("SELECT 1")
            except psycopg.Error as exc:
                logger.debug("Health probe of PostgreSQL `%s` failed: %s", self.name, exc)
                return False
        return True

    def state_record(self) -> dict[str, Any]:
        return {
            "kind": "postgres",
            "pid": self.pid,
            "create_time": self._create_time,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "socket_dir": str(self.socket_dir),
            "persistent": self.persistent,
        }


# ---------------------------------------------------------------------------------------------------
# Process helpers


def _pidfile_ready(data_dir: Path, pid: int) -> bool:
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    if len(lines) <= _PIDFILE_STATUS_LINE or lines[0].strip() != str(pid):
        return False
    return lines[_PIDFILE_STATUS_LINE].strip() == _READY_STATUS


def _process_create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, create_time: Any) -> bool:
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return isinstance(create_time, (int, float)) and abs(process.create_time() - create_time) < 0.5
    except psutil.Error:
        return False


def _postmaster_serving(data_dir: Path) -> int | None:
    import psutil

    pid = _live_postmaster_pid(data_dir)
    if pid is None:
        return None
    try:
        command = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    return pid if str(data_dir) in command else None


def _stop_foreign_postmaster(pid: int, timeout: float) -> None:
    """Stop a postmaster that is not our child: fast shutdown, immediate shutdown, then SIGKILL."""
    import psutil

    for signum, wait_for in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            if signum == signal.SIGKILL:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_for
        while time.monotonic() < deadline:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    return
            except psutil.NoSuchProcess:
                return
            time.sleep(0.05)


def _port_holder(port: int) -> int | None:
    import psutil

    try:
        for connection in psutil.net_connections(kind="tcp"):
            if connection.laddr and connection.laddr.port == port and connection.status == psutil.CONN_LISTEN:
                return connection.pid
    except (psutil.Error, OSError):
        return None
    return None

