"""PostgreSQL in a container from the official image (`postgres:<tag>`).

`DockerPostgresRuntime` takes the same `Launch.options` as the local `PostgresRuntime` (user, password,
databases, persistent) plus `image`, `tag`, `data_volume`, `stack`, `run_id` and `labels`. `DockerRuntime`
hands a launch with `options["kind"] == "postgres"` to it. The image's entrypoint creates
the user and the first database from POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB; the runtime creates
the other declared databases once the server accepts connections. The data directory is a named volume
when the server is persistent, else it lives and dies with the container.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from homunculy_nb.errors import ResourceError
from homunculy_nb.runtimes.base import Launch, Running, Runtime
from homunculy_nb.runtimes.docker import DockerContainer, DockerRuntime

logger = logging.getLogger(__name__)

DATA_DIRECTORY = "/var/lib/postgresql/data"
POSTGRES_PORT = 5432

# Over TCP on 127.0.0.1 inside the container, so the temporary server the image's entrypoint runs during
# initialisation (unix socket only) does not count as ready. The password comes from the container's own
# environment, so it never appears in the container's configuration.
HEALTH_TEST = [
    "CMD-SHELL",
    'PGPASSWORD="$POSTGRES_PASSWORD" pg_isready -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" && '
    'PGPASSWORD="$POSTGRES_PASSWORD" psql -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT 1"',
]

# Queries in a row that must succeed before `probe()` reports healthy.
PROBE_QUERIES = 3


# NOTE: tests run a stand-in built from Debian's PostgreSQL 15 with the official entrypoint's contract,
# because no registry is reachable there; the official image itself is untested.
def container_launch(launch: Launch) -> Launch:
    """Translate a PostgreSQL launch into the container launch for the official image."""
    options = launch.options
    user = options.get("user", "postgres")
    databases = list(options.get("databases") or [])
    first_database = databases[0] if databases else user

    volumes = []
    if options.get("persistent"):
        volume = options.get("volume") or options.get("data_volume") or f"{launch.name}-data"
        volumes.append((volume, DATA_DIRECTORY))

    container_options: dict[str, Any] = {
        "image": options.get("image", "postgres"),
        "tag": str(options.get("tag", "16")),
        "target_ports": {"tcp": POSTGRES_PORT},
        "volumes": volumes,
        "health_check": {"test": HEALTH_TEST, "interval": 1.0, "timeout": 5.0, "retries": 60, "start_period": 2.0},
    }
    for key in ("stack", "run_id", "network", "host_ports", "labels"):
        if key in options:
            container_options[key] = options[key]

    env = dict(launch.env)
    env.update({"POSTGRES_USER": user, "POSTGRES_PASSWORD": options["password"], "POSTGRES_DB": first_database})
    return Launch(
        name=launch.name, run_dir=launch.run_dir, env=env, ports={"tcp": launch.ports.get("tcp") or 0},
        host=launch.host, options=container_options, on_output=launch.on_output,
    )


class DockerPostgresRuntime(Runtime):
    """Runs a PostgreSQL server from the official image and creates its declared databases."""

    def __init__(self, start_timeout: float = 120.0) -> None:
        self.start_timeout = start_timeout

    async def start(self, launch: Launch) -> DockerPostgres:
        container = await DockerRuntime().start(container_launch(launch))
        server = DockerPostgres(container, launch)
        try:
            await server.wait_until_ready(self.start_timeout)
            await server.create_databases(list(launch.options.get("databases") or [])[1:])
        except BaseException:
            await container.stop(timeout=5)
            raise
        return server

    @classmethod
    def stop_orphan(cls, record: dict[str, Any]) -> bool:
        return DockerRuntime.stop_orphan(record)


class DockerPostgres(Running):
    """A PostgreSQL container: healthy when the image's check passes and queries over TCP succeed."""

    def __init__(self, container: DockerContainer, launch: Launch) -> None:
        self.container = container
        self.pid = container.pid
        self.port = container.ports["tcp"]
        self.user = launch.options.get("user", "postgres")
        self._password = launch.options["password"]
        self.name = launch.name

    def __repr__(self) -> str:
        return f"<DockerPostgres {self.name} port={self.port}>"

    def conninfo(self, database: str = "postgres") -> str:
        """Return a libpq keyword string for `database` on 127.0.0.1 (it contains the password)."""
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database} password={self._password}"

    async def wait_until_ready(self, timeout: float) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if self.container._exit.done():
                raise ResourceError(
                    f"PostgreSQL container for `{self.name}` exited with code {self.container._exit.result()} "
                    "before it accepted connections; its console output says why.",
                    self.name,
                )
            if await self.probe():
                return
            await asyncio.sleep(0.5)
        raise ResourceError(
            f"PostgreSQL container for `{self.name}` did not become healthy within {timeout:g} s.", self.name
        )

    async def create_databases(self, databases: list[str]) -> None:
        import psycopg
        from psycopg import sql

        if not databases:
            return
        async with await psycopg.AsyncConnection.connect(self.conninfo(), autocommit=True) as connection:
            for database in databases:
                cursor = await connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if await cursor.fetchone() is None:
                    await connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                    logger.info("Created database %s on `%s`", database, self.name)

    async def probe(self) -> bool | None:
        """True when the container's HEALTHCHECK passes and several queries in a row succeed over TCP."""
        import psycopg

        if not await self.container.probe():
            return False
        try:
            async with await psycopg.AsyncConnection.connect(self.conninfo(), connect_timeout=5) as connection:
                for _ in range(PROBE_QUERIES):
                    await connection.execute("SELECT 1")
        except psycopg.Error as exc:
            logger.debug("PostgreSQL probe of `%s` failed: %s", self.name, type(exc).__name__)
            return False
        return True

    async def wait(self) -> int:
        return await self.container.wait()

    async def stop(self, timeout: float = 10.0) -> int | None:
        return await self.container.stop(timeout)

    def state_record(self) -> dict[str, Any]:
        return self.container.state_record()
