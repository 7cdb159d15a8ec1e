"""Health checks: what a resource declares (HTTP, TCP, a callable) and the probes that run them.

A probe returns a `ProbeResult`; the orchestrator runs a resource's checks until all pass once (Healthy),
then keeps probing at a slower pace and reports Unhealthy when one fails. A resource with no declared
check uses its runtime's `Running.probe()` (PostgreSQL queries), else it is healthy once running.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from homunculy_nb.errors import ConfigurationError

if TYPE_CHECKING:
    from homunculy_nb.stack import Resource

logger = logging.getLogger(__name__)

# Seconds one probe may take before it counts as failed.
PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class HttpHealthCheck:
    """Healthy when GET `path` on the endpoint returns a status below 400."""

    path: str = "/health"
    endpoint: str = "http"

    def describe(self) -> str:
        return f"HTTP GET {self.path} on `{self.endpoint}`"


@dataclass(frozen=True)
class TcpHealthCheck:
    """Healthy when a TCP connection to the endpoint succeeds; the first endpoint when None."""

    endpoint: str | None = None

    def describe(self) -> str:
        return f"TCP connect to `{self.endpoint or 'first endpoint'}`"


@dataclass(frozen=True)
class CallableHealthCheck:
    """Healthy when `function()` returns true; it may be sync or async and may raise to fail."""

    function: Callable[[], Any]
    name: str = ""

    def describe(self) -> str:
        return f"check {self.name or getattr(self.function, '__name__', 'callable')}"


HealthCheck = HttpHealthCheck | TcpHealthCheck | CallableHealthCheck


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe, with a short reason when it failed."""

    healthy: bool
    detail: str = ""


def check_for(value: Any) -> HealthCheck:
    """Turn a declared check (a check object or a callable) into a check object."""
    if isinstance(value, (HttpHealthCheck, TcpHealthCheck, CallableHealthCheck)):
        return value
    if callable(value):
        return CallableHealthCheck(value, getattr(value, "__name__", ""))
    raise ConfigurationError(f"Invalid health check {value!r}: pass a callable or a check object.")


async def probe(check: HealthCheck, resource: Resource) -> ProbeResult:
    """Run one check against a launched resource."""
    try:
        return await asyncio.wait_for(_probe(check, resource), PROBE_TIMEOUT)
    except asyncio.TimeoutError:
        return ProbeResult(False, f"{check.describe()} timed out after {PROBE_TIMEOUT} s")
    except Exception as exc:  # noqa: BLE001 - a failing probe is a result, not an error
        return ProbeResult(False, f"{check.describe()} failed: {type(exc).__name__}: {exc}")


async def _probe(check: HealthCheck, resource: Resource) -> ProbeResult:
    if isinstance(check, HttpHealthCheck):
        return await probe_http(resource.endpoint(check.endpoint).url.reveal() + check.path)

    if isinstance(check, TcpHealthCheck):
        name = check.endpoint or next(iter(resource.endpoints), None)
        if name is None:
            return ProbeResult(False, f"`{resource.name}` has no endpoint to connect to")
        endpoint = resource.endpoint(name)
        return await probe_tcp(endpoint.host.reveal(), int(endpoint.port.reveal()))

    result = check.function()
    if inspect.isawaitable(result):
        result = await result
    return ProbeResult(bool(result), "" if result else f"{check.describe()} returned {result!r}")


async def probe_http(url: str) -> ProbeResult:
    """GET `url` and pass on a status below 400."""
    import httpx

    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as client:
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            return ProbeResult(False, f"GET {url} failed: {type(exc).__name__}")
    if response.status_code >= 400:
        return ProbeResult(False, f"GET {url} returned {response.status_code}")
    return ProbeResult(True)


async def probe_tcp(host: str, port: int) -> ProbeResult:
    """Open and close a TCP connection."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return ProbeResult(False, f"TCP connect to {host}:{port} failed: {exc.strerror or exc}")

    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return ProbeResult(True)
