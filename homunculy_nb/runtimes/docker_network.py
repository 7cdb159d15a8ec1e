"""Objects the containers of one process share: the stack network and the host port forwarders.

Each is created by the first container that needs it and removed when the last one that used it is gone.
A forwarder listens on the engine's host gateway address and relays to the same port on 127.0.0.1,
because host processes listen on loopback only and a container cannot reach the host's loopback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from homunculy_nb.errors import PortInUseError
from homunculy_nb.runtimes.docker_engine import remove_network_if_unused

logger = logging.getLogger(__name__)


class _Shared:
    """Networks and host port forwarders that this process created, with the containers using each."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.network_users: dict[str, set[str]] = {}
        self.forwarders: dict[tuple[str, int], tuple[asyncio.AbstractServer, set[str]]] = {}


_shared_by_loop: dict[int, _Shared] = {}


def _shared() -> _Shared:
    loop = asyncio.get_running_loop()
    return _shared_by_loop.setdefault(id(loop), _Shared())


async def acquire_network(client: Any, name: str, labels: dict[str, str], user: str) -> None:
    shared = _shared()
    async with shared.lock:
        existing = await asyncio.to_thread(client.networks, names=[name])
        if not any(network["Name"] == name for network in existing):
            await asyncio.to_thread(
                client.create_network, name, driver="bridge", labels=labels, check_duplicate=True
            )
            logger.info("Created network %s", name)
        shared.network_users.setdefault(name, set()).add(user)


async def release_network(client: Any, name: str, user: str) -> None:
    shared = _shared()
    async with shared.lock:
        users = shared.network_users.get(name, set())
        users.discard(user)
        if users:
            return
        shared.network_users.pop(name, None)
        await asyncio.to_thread(remove_network_if_unused, client, name)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _forward_connection(port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        logger.debug("Nothing listens on 127.0.0.1:%s for a container's connection", port)
        writer.close()
        return
    await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def acquire_forwarder(address: str, port: int, user: str) -> None:
    shared = _shared()
    async with shared.lock:
        key = (address, port)
        if key not in shared.forwarders:
            try:
                server = await asyncio.start_server(
                    lambda r, w: _forward_connection(port, r, w), address, port
                )
            except OSError as exc:
                raise PortInUseError(
                    f"Cannot forward host port {port} to containers: binding {address}:{port} failed "
                    f"({exc.strerror}). Free that port on {address}.",
                    port=port,
                ) from exc
            shared.forwarders[key] = (server, set())
            logger.info("Forwarding %s:%s to 127.0.0.1:%s for containers", address, port, port)
        shared.forwarders[key][1].add(user)


async def release_forwarder(address: str, port: int, user: str) -> None:
    shared = _shared()
    async with shared.lock:
        key = (address, port)
        if key not in shared.forwarders:
            return
        server, users = shared.forwarders[key]
        users.discard(user)
        if not users:
            del shared.forwarders[key]
            server.close()
            await server.wait_closed()
