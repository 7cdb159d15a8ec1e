"""The Docker engine: connecting to it, naming the objects a stack owns, and removing them by label.

Every container, network and volume the runtime creates carries the labels `homunculy-nb.stack`,
`homunculy-nb.resource` and `homunculy-nb.run-id`; `remove_stack()` finds them by those labels.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import re
import socket
import struct
from typing import Any

from homunculy_nb.errors import RuntimeUnavailableError

logger = logging.getLogger(__name__)

LABEL_STACK = "homunculy-nb.stack"
LABEL_RESOURCE = "homunculy-nb.resource"
LABEL_RUN_ID = "homunculy-nb.run-id"

HOST_ALIAS = "host.docker.internal"

# Seconds an engine request may take before the call fails; streams and waits have no timeout.
REQUEST_TIMEOUT = 120

_NAME_PATTERN = re.compile(r"[^a-zA-Z0-9_.-]+")


# ---------------------------------------------------------------------------------------------------------
# Engine access


def docker_module() -> Any:
    """Import the docker SDK, or raise `RuntimeUnavailableError` naming the extra that installs it."""
    try:
        import docker
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "Running containers needs the docker SDK, which is not installed. "
            "Install it with: pip install 'homunculy-nb[docker]'"
        ) from exc
    return docker


def engine_client(timeout: float | None = REQUEST_TIMEOUT) -> Any:
    """Return a low-level `docker.APIClient` for the engine that DOCKER_HOST (or the default socket) names.

    Raises `RuntimeUnavailableError` with the reason and DOCKER_HOST when the engine does not respond.
    """
    docker = docker_module()
    docker_host = os.environ.get("DOCKER_HOST") or "unset (default unix:///var/run/docker.sock)"

    unreachable = _connect_error(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    if unreachable:
        raise RuntimeUnavailableError(
            f"No Docker engine responds (DOCKER_HOST is {docker_host}): {unreachable}. "
            "Start dockerd (scripts/start-dockerd.sh does so as root) or point DOCKER_HOST at a running "
            "engine, or run the stack with runtime='local' and no container resources."
        )

    client = None
    try:
        client = docker.from_env(timeout=timeout, max_pool_size=4).api
        client.ping()
    except docker.errors.DockerException as exc:
        if client is not None:
            client.close()
        raise RuntimeUnavailableError(
            f"No Docker engine responds (DOCKER_HOST is {docker_host}): {exc}. "
            "Start dockerd (scripts/start-dockerd.sh does so as root) or point DOCKER_HOST at a running "
            "engine, or run the stack with runtime='local' and no container resources."
        ) from exc
    return client


def _connect_error(address: str) -> str | None:
    """Try a plain connection to the engine's socket first: the SDK leaks its socket when this fails."""
    if address.startswith("unix://"):
        target: Any = address[len("unix://"):]
        family = socket.AF_UNIX
    elif address.startswith("tcp://"):
        host, _, port = address[len("tcp://"):].rstrip("/").rpartition(":")
        target = (host.strip("[]"), int(port or 2375))
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    else:
        return None  # ssh:// and npipe:// are left to the SDK

    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        try:
            probe.connect(target)
        except OSError as exc:
            return f"cannot connect to {address} ({exc.strerror or exc})"
    return None


def check_engine() -> None:
    """Raise `RuntimeUnavailableError` naming the reason and DOCKER_HOST when no engine responds."""
    engine_client(timeout=10).close()


def network_name(stack: str) -> str:
    """Return the name of the stack's bridge network."""
    return f"homunculy-nb-{sanitize(stack)}"


def volume_name(stack: str, name: str) -> str:
    """Return the engine's name of a stack's named volume, prefixed with the stack like Compose does."""
    return f"{sanitize(stack)}_{sanitize(name)}"


def host_gateway_address(client: Any) -> str:
    """Return the address that `host-gateway` maps to: the gateway of the engine's default bridge.

    Forwarding host ports to containers only works with an engine on this machine, so the bridge
    interface is read locally when the engine's network record leaves the gateway out.
    """
    # NOTE: an engine started with --host-gateway-ip maps host-gateway elsewhere; that is not read here.
    details = client.inspect_network("bridge")
    for entry in details["IPAM"].get("Config") or []:
        if entry.get("Gateway"):
            return entry["Gateway"]

    interface = (details.get("Options") or {}).get("com.docker.network.bridge.name", "docker0")
    address = _interface_address(interface)
    if address:
        return address
    for entry in details["IPAM"].get("Config") or []:
        if entry.get("Subnet") and ":" not in entry["Subnet"]:
            return str(next(ipaddress.ip_network(entry["Subnet"]).hosts()))
    raise RuntimeUnavailableError(
        "Cannot tell the address of the Docker engine's host gateway: the default bridge network has no "
        "gateway and no IPv4 subnet."
    )


def _interface_address(interface: str) -> str | None:
    siocgifaddr = 0x8915  # Linux ioctl that reads an interface's IPv4 address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            request = struct.pack("256s", interface.encode()[:15])
            reply = fcntl.ioctl(probe.fileno(), siocgifaddr, request)
        except OSError:
            return None
    return socket.inet_ntoa(reply[20:24])


def sanitize(name: str) -> str:
    return _NAME_PATTERN.sub("-", name).strip("-.") or "stack"

# ---------------------------------------------------------------------------------------------------------
# Removing what a stack owns


def remove_container(client: Any, container_id: str) -> bool:
    """Force-remove a container; False when it is gone or another caller is already removing it."""
    docker = docker_module()
    try:
        client.remove_container(container_id, force=True)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        if exc.status_code == 409 and "already in progress" in str(exc.explanation):
            return False
        raise
    return True


def remove_network_if_unused(client: Any, name: str) -> bool:
    docker = docker_module()
    try:
        details = client.inspect_network(name)
        if details.get("Containers"):
            return False
        client.remove_network(name)
    except docker.errors.NotFound:
        return False
    except docker.errors.APIError as exc:
        logger.warning("Could not remove network %s: %s", name, exc)
        return False
    logger.info("Removed network %s", name)
    return True


def remove_stack(stack: str, volumes: bool = False, keep_run_id: str | None = None, images: bool = False) -> int:
    """Remove every container and network labelled with `stack`; return the number of containers removed.

    `volumes` also removes its named volumes, `images` the images built from its Dockerfiles.
    Containers of run `keep_run_id` are spared, so a new run can clear what an old one left.
    """
    docker = docker_module()
    client = engine_client()
    removed = 0
    try:
        for container in client.containers(all=True, filters={"label": f"{LABEL_STACK}={stack}"}):
            if keep_run_id and container["Labels"].get(LABEL_RUN_ID) == keep_run_id:
                continue
            if remove_container(client, container["Id"]):
                removed += 1
                logger.info("Removed container %s", container["Names"][0].lstrip("/"))

        for network in client.networks(filters={"label": f"{LABEL_STACK}={stack}"}):
            remove_network_if_unused(client, network["Name"])

        if volumes:
            found = client.volumes(filters={"label": f"{LABEL_STACK}={stack}"}).get("Volumes") or []
            for volume in found:
                try:
                    client.remove_volume(volume["Name"])
                    logger.info("Removed volume %s", volume["Name"])
                except docker.errors.APIError as exc:
                    logger.warning("Could not remove volume %s: %s", volume["Name"], exc)

        if images:
            for image in client.images(filters={"label": f"{LABEL_STACK}={stack}"}):
                try:
                    client.remove_image(image["Id"], force=True)
                    logger.info("Removed image %s", ", ".join(image.get("RepoTags") or [image["Id"]]))
                except docker.errors.APIError as exc:
                    logger.warning("Could not remove image %s: %s", image["Id"], exc)
    finally:
        client.close()
    return removed
