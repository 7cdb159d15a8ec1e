"""Containers on a Docker engine.

Each stack gets one user-defined bridge network. A container joins it with its resource name as a network
alias, so `DB_HOST=homunculy-postgres` works from another container. Endpoints are published on 127.0.0.1
for host processes. Containers reach host processes through `host.docker.internal`, which the engine maps
to its host gateway address. Host processes listen on 127.0.0.1 only, so the runtime forwards each host
port a container needs from the gateway address to 127.0.0.1 (`launch.options["host_ports"]`).

Every container, network and volume carries the labels `homunculy-nb.stack`, `homunculy-nb.resource` and
`homunculy-nb.run-id`, which is how `remove_stack()` and `stop_orphan()` find them after a kernel crash.

`Launch.options` for `DockerRuntime.start()`:

    image           image name, e.g. "postgres" (required unless `dockerfile` is given)
    tag             image tag, default "latest"
    dockerfile      (context, dockerfile, build_args): build the image before start
    entrypoint      list[str] replacing the image's ENTRYPOINT
    args            list[str] replacing the image's CMD (`launch.command` is used when absent)
    bind_mounts     [(source, target, read_only)]; sources must exist on the host
    volumes         [(name, target)]; named volumes, created as "<stack>_<name>" and kept by `stop()`
    target_ports    {endpoint: container port}; `launch.ports` gives the host port (0 or None: any)
    health_check    {"test": [...], "interval": s, "timeout": s, "retries": n, "start_period": s}
                    replacing the image's HEALTHCHECK
    host_ports      [int]: host ports on 127.0.0.1 that the container reaches via host.docker.internal;
                    every `host.docker.internal:PORT` in the environment or args is added, and so are
                    the host endpoints of the stack of `resource`
    resource        the declared resource (optional), whose stack gives the host endpoints to forward
    stack, run_id   label values (the run id may also come as `labels["homunculy-nb.run"]`);
                    `network` defaults to "homunculy-nb-<stack>"
    labels          extra container labels
    kind            "postgres" runs the official PostgreSQL image (see `docker_postgres`)

The docker SDK blocks, so every engine call runs in a worker thread. Log streams and `wait()` hold a
connection each for as long as the container runs, so they use their own threads and clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from homunculy_nb.errors import ConfigurationError, PortInUseError, ResourceError, RuntimeUnavailableError
from homunculy_nb.runtimes.base import Launch, OutputCallback, Running, Runtime
from homunculy_nb.runtimes.docker_engine import (
    HOST_ALIAS,
    LABEL_RESOURCE,
    LABEL_RUN_ID,
    LABEL_STACK,
    check_engine,
    docker_module,
    engine_client,
    host_gateway_address,
    network_name,
    remove_container,
    remove_network_if_unused,
    remove_stack,
    sanitize,
    volume_name,
)
from homunculy_nb.runtimes.docker_network import (
    acquire_forwarder,
    acquire_network,
    release_forwarder,
    release_network,
)

__all__ = [
    "LABEL_RESOURCE", "LABEL_RUN_ID", "LABEL_STACK", "DockerContainer", "DockerRuntime", "check_engine",
    "container_spec", "engine_client", "network_name", "remove_stack", "volume_name",
]

logger = logging.getLogger(__name__)

_HOST_PORT_PATTERN = re.compile(re.escape(HOST_ALIAS) + r":(\d{1,5})\b")


# ---------------------------------------------------------------------------------------------------------
# Images


async def _ensure_image(client: Any, launch: Launch) -> str:
    """Build the image from the Dockerfile, or check that the named image exists; return its reference."""
    options = launch.options
    dockerfile = options.get("dockerfile")
    if dockerfile:
        return await _build_image(client, launch, dockerfile)

    image = options.get("image")
    if not image:
        raise ConfigurationError(f"Container `{launch.name}` has neither an image nor a Dockerfile.")
    reference = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:{options.get('tag') or 'latest'}"

    docker = docker_module()
    try:
        await asyncio.to_thread(client.inspect_image, reference)
        return reference
    except docker.errors.ImageNotFound:
        pass

    _emit(launch.on_output, "system", f"Pulling image {reference}")
    try:
        await asyncio.to_thread(client.pull, reference)
    except docker.errors.APIError as exc:
        raise ResourceError(
            f"Image {reference} for `{launch.name}` is not on the Docker engine and pulling it failed: "
            f"{exc.explanation or exc}. Pull or build it (`docker pull {reference}`), or declare "
            "`with_dockerfile(...)`.",
            launch.name,
        ) from exc
    return reference


async def _build_image(client: Any, launch: Launch, dockerfile: Any) -> str:
    context, file_name, build_args = _dockerfile_parts(dockerfile)
    context_path = Path(context).resolve()
    if not (context_path / file_name).is_file():
        raise ConfigurationError(
            f"The Dockerfile {context_path / file_name} for `{launch.name}` does not exist. "
            "Pass the build context folder and the Dockerfile's name relative to it."
        )

    stack = launch.options.get("stack", "default")
    reference = f"homunculy-nb/{sanitize(stack).lower()}-{sanitize(launch.name).lower()}:latest"
    labels = _labels(launch)
    _emit(launch.on_output, "system", f"Building image {reference} from {context_path / file_name}")

    loop = asyncio.get_running_loop()

    def build() -> list[str]:
        build_client = engine_client(timeout=None)
        tail: list[str] = []
        try:
            for chunk in build_client.build(
                path=str(context_path), dockerfile=file_name, buildargs=dict(build_args or {}), tag=reference,
                rm=True, forcerm=True, decode=True, labels=labels,
            ):
                if "error" in chunk:
                    return tail + [str(chunk["error"]).rstrip()]
                text = chunk.get("stream") or chunk.get("status") or ""
                for line in text.splitlines():
                    if line.strip():
                        tail = (tail + [line])[-20:]
                        loop.call_soon_threadsafe(_emit, launch.on_output, "system", line)
        finally:
            build_client.close()
        return []

    errors = await asyncio.to_thread(build)
    if errors:
        detail = "\n".join(errors[-10:])
        raise ResourceError(f"Building the image for `{launch.name}` failed:\n{detail}", launch.name)
    return reference


def _dockerfile_parts(dockerfile: Any) -> tuple[str, str, dict[str, str] | None]:
    if isinstance(dockerfile, dict):
        return dockerfile["context"], dockerfile.get("dockerfile", "Dockerfile"), dockerfile.get("build_args")
    if isinstance(dockerfile, (str, os.PathLike)):
        return str(dockerfile), "Dockerfile", None
    parts = list(dockerfile) + [None, None]
    return str(parts[0]), parts[1] or "Dockerfile", parts[2]


# ---------------------------------------------------------------------------------------------------------
# Container specification


def _run_id(options: dict[str, Any]) -> str:
    labels = options.get("labels") or {}
    return str(options.get("run_id") or labels.get(LABEL_RUN_ID) or labels.get("homunculy-nb.run") or "")


def _labels(launch: Launch) -> dict[str, str]:
    labels = {str(key): str(value) for key, value in (launch.options.get("labels") or {}).items()}
    labels.update({
        LABEL_STACK: str(launch.options.get("stack", "default")),
        LABEL_RESOURCE: launch.name,
        LABEL_RUN_ID: _run_id(launch.options),
    })
    return labels


def _seconds_to_ns(value: float | None) -> int | None:
    return None if value is None else int(value * 1_000_000_000)


def container_spec(launch: Launch, image: str) -> dict[str, Any]:
    """Translate a launch into the engine's create-container arguments (plain data, no engine call).

    Raises `ConfigurationError` for a bind mount whose source does not exist or an endpoint without a
    target port.
    """
    options = launch.options
    stack = str(options.get("stack", "default"))
    network = options.get("network") or network_name(stack)

    target_ports: dict[str, int] = dict(options.get("target_ports") or {})
    port_bindings: dict[str, tuple[str, int | None]] = {}
    for endpoint, host_port in launch.ports.items():
        target = target_ports.get(endpoint)
        if target is None:
            raise ConfigurationError(
                f"Endpoint `{endpoint}` of container `{launch.name}` has no target port. "
                "Declare it with with_http_endpoint(port=..., target_port=...)."
            )
        port_bindings[f"{int(target)}/tcp"] = ("127.0.0.1", host_port or None)

    mounts = []
    for source, target, read_only in options.get("bind_mounts") or []:
        source_path = Path(source).expanduser().resolve()
        if not source_path.exists():
            raise ConfigurationError(
                f"Bind mount source {source_path} for container `{launch.name}` does not exist. "
                "Create it or fix the path in with_bind_mount()."
            )
        mounts.append({"type": "bind", "source": str(source_path), "target": target, "read_only": bool(read_only)})
    for name, target in options.get("volumes") or []:
        mounts.append({"type": "volume", "source": volume_name(stack, name), "target": target, "read_only": False})

    health_check = options.get("health_check")
    healthcheck = None
    if health_check:
        healthcheck = {
            "test": list(health_check["test"]),
            "interval": _seconds_to_ns(health_check.get("interval", 1.0)),
            "timeout": _seconds_to_ns(health_check.get("timeout", 5.0)),
            "retries": int(health_check.get("retries", 30)),
            "start_period": _seconds_to_ns(health_check.get("start_period", 0.0)),
        }

    args = options.get("args")
    if args is None:
        args = launch.command

    run_id = _run_id(options)
    suffix = f"-{run_id[:8]}" if run_id else ""
    return {
        "name": f"{sanitize(stack)}-{sanitize(launch.name)}{suffix}",
        "image": image,
        "command": list(args) if args else None,
        "entrypoint": list(options["entrypoint"]) if options.get("entrypoint") else None,
        "environment": dict(launch.env),
        "labels": _labels(launch),
        "ports": [int(key.split("/")[0]) for key in port_bindings],
        "port_bindings": port_bindings,
        "mounts": mounts,
        "network": network,
        "aliases": [launch.name],
        "extra_hosts": {HOST_ALIAS: "host-gateway"},
        "healthcheck": healthcheck,
        "host_ports": _host_ports(
            [*(options.get("host_ports") or []), *_stack_host_ports(options.get("resource"))],
            launch.env.values(), args or [],
        ),
    }


def _stack_host_ports(resource: Any) -> list[int]:
    """Return the host ports of the stack's host processes and collector, which its containers may reach.

    A container may be given a host process's address in parts (`DB_HOST` and `DB_PORT`), which no
    pattern in its environment reveals, so every host endpoint of the stack is forwarded.
    """
    stack = getattr(resource, "stack", None)
    if stack is None:
        return []

    ports = []
    for other in stack.resources.values():
        if other.runs_in_container:
            continue
        for endpoint in other.endpoints.values():
            if endpoint.allocated is not None:
                ports.append(int(endpoint.allocated.port))
    for url in (getattr(stack.collector, "endpoints", None) or {}).values():
        port = urllib.parse.urlsplit(str(url)).port
        if port:
            ports.append(port)
    return ports


def _host_ports(declared: list[int], *texts: Any) -> list[int]:
    """Return the declared host ports plus every `host.docker.internal:PORT` in the environment and args."""
    ports = list(dict.fromkeys(int(port) for port in declared))
    for group in texts:
        for text in group:
            for match in _HOST_PORT_PATTERN.finditer(str(text)):
                port = int(match.group(1))
                if port not in ports:
                    ports.append(port)
    return ports


def _create_container(client: Any, spec: dict[str, Any]) -> str:
    docker = docker_module()
    mounts = [
        docker.types.Mount(item["target"], item["source"], type=item["type"], read_only=item["read_only"])
        for item in spec["mounts"]
    ]
    host_config = client.create_host_config(
        port_bindings=spec["port_bindings"],
        mounts=mounts,
        extra_hosts=spec["extra_hosts"],
        network_mode=spec["network"],
    )
    networking_config = client.create_networking_config(
        {spec["network"]: client.create_endpoint_config(aliases=spec["aliases"])}
    )
    healthcheck = docker.types.Healthcheck(**spec["healthcheck"]) if spec["healthcheck"] else None
    created = client.create_container(
        spec["image"],
        command=spec["command"],
        entrypoint=spec["entrypoint"],
        environment=spec["environment"],
        labels=spec["labels"],
        name=spec["name"],
        ports=spec["ports"],
        host_config=host_config,
        networking_config=networking_config,
        healthcheck=healthcheck,
    )
    return created["Id"]


def _ensure_volumes(client: Any, spec: dict[str, Any]) -> None:
    docker = docker_module()
    for mount in spec["mounts"]:
        if mount["type"] != "volume":
            continue
        try:
            client.inspect_volume(mount["source"])
        except docker.errors.NotFound:
            labels = {LABEL_STACK: spec["labels"][LABEL_STACK], LABEL_RESOURCE: spec["labels"][LABEL_RESOURCE]}
            client.create_volume(mount["source"], labels=labels)
            logger.info("Created volume %s", mount["source"])


def _remove_stale_container(client: Any, name: str) -> None:
    """Remove a container with our name left by an earlier run of the same stack and run id."""
    docker = docker_module()
    try:
        details = client.inspect_container(name)
    except docker.errors.NotFound:
        return
    if LABEL_STACK not in (details["Config"].get("Labels") or {}):
        raise ResourceError(
            f"A container named {name} exists and was not created by homunculy-nb. Remove or rename it."
        )
    remove_container(client, details["Id"])


# ---------------------------------------------------------------------------------------------------------
# Console output


def _emit(on_output: OutputCallback, stream: str, line: str) -> None:
    try:
        on_output(stream, line)
    except Exception:  # a broken subscriber must not stop the log stream
        logger.exception("Console output callback failed")


def _split_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buffer:
        yield buffer.rstrip(b"\r").decode("utf-8", errors="replace")


def _stream_logs(container_id: str, stream: str, loop: asyncio.AbstractEventLoop, on_output: OutputCallback) -> None:
    docker = docker_module()
    try:
        client = engine_client(timeout=None)
    except RuntimeUnavailableError as exc:
        logger.warning("Cannot stream the logs of container %s: %s", container_id[:12], exc)
        return
    try:
        chunks = client.logs(
            container_id, stdout=stream == "stdout", stderr=stream == "stderr", stream=True, follow=True
        )
        for line in _split_lines(chunks):
            try:
                loop.call_soon_threadsafe(_emit, on_output, stream, line)
            except RuntimeError:  # the event loop was closed, so the output has no reader
                return
    except docker.errors.NotFound:
        pass
    except docker.errors.DockerException as exc:
        logger.debug("Log stream of container %s ended: %s", container_id[:12], exc)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------------
# Runtime and handle


class DockerRuntime(Runtime):
    """Runs a container resource on the Docker engine that DOCKER_HOST names."""

    async def start(self, launch: Launch) -> Running:
        if launch.options.get("kind") == "postgres":
            from homunculy_nb.runtimes.docker_postgres import DockerPostgresRuntime

            return await DockerPostgresRuntime().start(launch)

        client = await asyncio.to_thread(engine_client)
        image = await _ensure_image(client, launch)
        spec = container_spec(launch, image)
        return await _start_container(client, launch, spec)

    def check_available(self, launch: Launch) -> None:
        """Raise `RuntimeUnavailableError` naming the reason and DOCKER_HOST when no engine responds."""
        check_engine()

    @classmethod
    def stop_orphan(cls, record: dict[str, Any]) -> bool:
        """Remove the container a crashed process left, and its network once no container uses it."""
        container_id = record.get("container_id")
        if not container_id:
            return False

        client = engine_client()
        try:
            removed = remove_container(client, container_id)
            if removed:
                logger.info("Removed orphan container %s of `%s`", record.get("container_name"), record.get("resource"))
            if record.get("network"):
                remove_network_if_unused(client, record["network"])
        finally:
            client.close()
        return removed

    @staticmethod
    def remove_stack(stack: str, volumes: bool = False, keep_run_id: str | None = None,
                     images: bool = False) -> int:
        """Remove every container and network labelled with `stack`; see `docker_engine.remove_stack`."""
        return remove_stack(stack, volumes=volumes, keep_run_id=keep_run_id, images=images)


async def _start_container(client: Any, launch: Launch, spec: dict[str, Any]) -> DockerContainer:
    docker = docker_module()
    user = f"{spec['name']}"

    await acquire_network(client, spec["network"], {LABEL_STACK: spec["labels"][LABEL_STACK]}, user)
    gateway = None
    try:
        if spec["host_ports"]:
            gateway = await asyncio.to_thread(host_gateway_address, client)
            for port in spec["host_ports"]:
                await acquire_forwarder(gateway, port, user)

        await asyncio.to_thread(_ensure_volumes, client, spec)
        await asyncio.to_thread(_remove_stale_container, client, spec["name"])
        container_id = await asyncio.to_thread(_create_container, client, spec)
        try:
            await asyncio.to_thread(client.start, container_id)
        except docker.errors.APIError as exc:
            await asyncio.to_thread(remove_container, client, container_id)
            raise _start_error(launch, spec, exc) from exc
    except BaseException:
        for port in spec["host_ports"]:
            if gateway:
                await release_forwarder(gateway, port, user)
        await release_network(client, spec["network"], user)
        raise

    details = await asyncio.to_thread(client.inspect_container, container_id)
    container = DockerContainer(client, launch, spec, container_id, details, gateway)
    logger.info(
        "Started container %s (%s) for `%s` with ports %s", spec["name"], spec["image"], launch.name, container.ports
    )
    return container


def _start_error(launch: Launch, spec: dict[str, Any], exc: Any) -> ResourceError:
    text = str(exc.explanation or exc)
    if "port is already allocated" in text or "address already in use" in text:
        port = next((binding[1] for binding in spec["port_bindings"].values() if binding[1]), None)
        return PortInUseError(
            f"Port {port} for `{launch.name}` is in use on 127.0.0.1. Stop that process or pass port=None "
            "to allocate a free one.",
            launch.name,
            port=port,
        )
    return ResourceError(f"Starting container {spec['name']} for `{launch.name}` failed: {text}", launch.name)


class DockerContainer(Running):
    """A started container: streams its console output, reports its exit code, stops and removes it."""

    def __init__(self, client: Any, launch: Launch, spec: dict[str, Any], container_id: str,
                 details: dict[str, Any], gateway: str | None) -> None:
        self.client = client
        self.launch = launch
        self.spec = spec
        self.container_id = container_id
        self.name = spec["name"]
        self.pid = details["State"].get("Pid") or None
        self.ports = _published_ports(details, launch, spec)
        self._gateway = gateway
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[int] = self._loop.create_future()

        self._log_threads = [
            threading.Thread(
                target=_stream_logs, args=(container_id, stream, self._loop, launch.on_output),
                name=f"docker-logs-{self.name}-{stream}", daemon=True,
            )
            for stream in ("stdout", "stderr")
        ]
        for thread in self._log_threads:
            thread.start()
        threading.Thread(target=self._wait_in_thread, name=f"docker-wait-{self.name}", daemon=True).start()
        self._release_task: asyncio.Task[None] | None = None
        self._exit.add_done_callback(self._release_on_exit)

    def __repr__(self) -> str:
        return f"<DockerContainer {self.name} ports={self.ports}>"

    def _release_on_exit(self, _: asyncio.Future[int]) -> None:
        self._release()

    def _wait_in_thread(self) -> None:
        docker = docker_module()
        code = -1
        try:
            client = engine_client(timeout=None)
        except RuntimeUnavailableError as exc:
            logger.warning("Waiting for container %s failed: %s", self.name, exc)
        else:
            try:
                code = int(client.wait(self.container_id)["StatusCode"])
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                logger.warning("Waiting for container %s failed: %s", self.name, exc)
            finally:
                client.close()

        # Deliver the last console lines before the exit code, so dependents see complete logs.
        for thread in self._log_threads:
            thread.join(timeout=10)
        with contextlib.suppress(RuntimeError):  # the event loop was closed, so no caller awaits the exit code
            self._loop.call_soon_threadsafe(self._set_exit, code)

    def _set_exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Send SIGTERM (or the image's STOPSIGNAL), kill after `timeout` seconds, then remove the container."""
        docker = docker_module()

        if not self._exit.done():
            try:
                await asyncio.to_thread(self.client.stop, self.container_id, timeout=max(0, math.ceil(timeout)))
            except docker.errors.NotFound:
                self._set_exit(-1)
            except docker.errors.APIError as exc:
                logger.warning("Stopping container %s failed: %s; killing it", self.name, exc)
                with contextlib.suppress(docker.errors.APIError):
                    await asyncio.to_thread(self.client.kill, self.container_id)

        try:
            code = await asyncio.wait_for(asyncio.shield(self._exit), timeout + 30)
        except TimeoutError:
            code = None
        await self._release()
        return code

    async def probe(self) -> bool | None:
        """Report the container's HEALTHCHECK status: True when healthy, None when the image has none."""
        docker = docker_module()
        try:
            details = await asyncio.to_thread(self.client.inspect_container, self.container_id)
        except docker.errors.NotFound:
            return False
        state = details["State"]
        health = state.get("Health")
        if health is None:
            return None if state.get("Running") else False
        return health.get("Status") == "healthy"

    def state_record(self) -> dict[str, Any]:
        return {
            "runtime": "docker",
            "pid": self.pid,
            "container_id": self.container_id,
            "container_name": self.name,
            "resource": self.launch.name,
            "network": self.spec["network"],
            "stack": self.spec["labels"][LABEL_STACK],
            "run_id": self.spec["labels"][LABEL_RUN_ID],
        }

    def _release(self) -> asyncio.Future[None]:
        """Start removing the container once; every caller awaits the same removal."""
        if self._release_task is None:
            self._release_task = self._loop.create_task(self._remove_and_release())
        return asyncio.shield(self._release_task)

    async def _remove_and_release(self) -> None:
        """Remove the container, then give up this container's share of the network and forwarders."""
        docker = docker_module()
        try:
            await asyncio.to_thread(remove_container, self.client, self.container_id)
            logger.info("Removed container %s of `%s`", self.name, self.launch.name)
        except docker.errors.DockerException as exc:
            # No caller awaits this step when the container exits by itself, so its failure ends here.
            logger.warning("Could not remove container %s of `%s`: %s", self.name, self.launch.name, exc)

        if self._gateway:
            for port in self.spec["host_ports"]:
                await release_forwarder(self._gateway, port, self.name)
        try:
            await release_network(self.client, self.spec["network"], self.name)
        except docker.errors.DockerException as exc:
            logger.warning("Could not remove network %s: %s", self.spec["network"], exc)


def _published_ports(details: dict[str, Any], launch: Launch, spec: dict[str, Any]) -> dict[str, int]:
    """Read back the host ports the engine bound, keyed by endpoint name."""
    bound = details["NetworkSettings"].get("Ports") or {}
    target_ports = launch.options.get("target_ports") or {}
    ports = {}
    for endpoint in launch.ports:
        bindings = bound.get(f"{int(target_ports[endpoint])}/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") in ("127.0.0.1", "0.0.0.0", ""):
                ports[endpoint] = int(binding["HostPort"])
                break
    return ports
