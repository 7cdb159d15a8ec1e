"""The OTLP collector: gRPC and HTTP receivers on background threads, feeding the telemetry store.

    collector = Collector(grpc_port=0, http_port=0).start()
    collector.endpoints        # {"grpc": "http://127.0.0.1:41231", "http": "http://127.0.0.1:41232"}
    collector.spans()          # pandas DataFrame

The gRPC receiver serves `Export` of TraceService, MetricsService and LogsService. It receives the raw
request bytes and decodes them itself, so an undecodable message gets INVALID_ARGUMENT with the reason
instead of grpcio's generic deserialization failure. The HTTP receiver is a small HTTP/1.1 server
(keep-alive, chunked bodies, gzip) serving `POST /v1/traces`, `/v1/metrics` and `/v1/logs` in protobuf
or OTLP/JSON. Both reply as the OTLP specification requires: an empty partial success when everything was
stored, a partial success with the rejected count otherwise, and `google.rpc.Status` errors.
"""

from __future__ import annotations

import hmac
import logging
import os
import signal as signals_module
import socket
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from homunculy_nb.errors import CollectorError, ConfigurationError
from homunculy_nb.otlp import HTTP_PATHS, SIGNALS, InvalidExportError, decode, export_response, response_json
from homunculy_nb.telemetry import Callback, TelemetryQueries, TelemetryStore

logger = logging.getLogger(__name__)

API_KEY_HEADER = "x-otlp-api-key"
"""The HTTP header and gRPC metadata key that carries the collector's API key."""

MEDIA_TYPES = {"application/x-protobuf": "protobuf", "application/protobuf": "protobuf", "application/json": "json"}
"""Accepted request media types and the encoding each one selects."""

GRPC_SERVICES = {
    "spans": "opentelemetry.proto.collector.trace.v1.TraceService",
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}

# google.rpc.Code values used in HTTP error bodies.
_RPC_CODES = {400: 3, 401: 16, 404: 5, 405: 12, 411: 3, 413: 8, 415: 3, 500: 13}
_MiB = 1024 * 1024
_IDLE_CONNECTION_TIMEOUT_S = 120


@dataclass(frozen=True)
class CollectorLimits:
    """Bounds of the collector: stored items per signal and the largest accepted request."""

    spans: int = 1_000_000
    logs: int = 1_000_000
    metrics: int = 5_000_000
    grpc_message_bytes: int = 16 * _MiB
    http_body_bytes: int = 20 * _MiB
    """Measured after decompression, so a small gzip body that inflates past it is cut off."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"Collector limit `{name}={value!r}` must be a positive integer.")

    @classmethod
    def coerce(cls, limits: CollectorLimits | dict[str, int] | None) -> CollectorLimits:
        if limits is None:
            return cls()
        if isinstance(limits, cls):
            return limits
        if not isinstance(limits, dict):
            raise ConfigurationError(f"`limits={limits!r}` must be a dict or a CollectorLimits.")
        unknown = set(limits) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigurationError(
                f"Unknown collector limit(s) {sorted(unknown)}. Valid keys: {sorted(cls.__dataclass_fields__)}."
            )
        return cls(**limits)


class Collector(TelemetryQueries):
    """An OTLP receiver (gRPC and HTTP) that stores spans, logs and metrics for pandas queries.

    Port 0 picks a free port and None turns that receiver off; `endpoints` gives the bound URLs once
    started. Both servers run on background threads, so `start()` returns at once. Querying works
    before `start()` and after `stop()` and returns whatever was stored.
    """

    def __init__(self, host: str = "127.0.0.1", grpc_port: int | None = 4317, http_port: int | None = 4318,
                 api_key: Any = None, limits: CollectorLimits | dict[str, int] | None = None) -> None:
        for argument, port in (("grpc_port", grpc_port), ("http_port", http_port)):
            if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535):
                raise ConfigurationError(
                    f"`{argument}={port!r}` is not a port. Pass 0-65535 (0 picks a free port) or None to turn "
                    f"that receiver off."
                )
        self.host = host
        self.grpc_port = grpc_port
        self.http_port = http_port
        if api_key is not None and hasattr(api_key, "reveal"):
            api_key = api_key.reveal()
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ConfigurationError("`api_key` must be a non-empty string or None.")
        self._api_key: str | None = api_key
        self.limits = CollectorLimits.coerce(limits)
        self.store = TelemetryStore({"spans": self.limits.spans, "logs": self.limits.logs,
                                     "metrics": self.limits.metrics})
        self._grpc_server: Any = None
        self._http_server: _OTLPHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._endpoints: dict[str, str] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        if self._endpoints is None:
            where = "not started"
        else:
            where = f"grpc={self._endpoints.get('grpc', 'off')} http={self._endpoints.get('http', 'off')}"
        counts = " ".join(f"{signal}={len(self.store.tables[signal])}" for signal in SIGNALS)
        return f"<Collector {where} {counts}>"

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Collector:
        """Bind and start both receivers; return self. Raises `CollectorError` when a port is taken."""
        with self._lock:
            if self._endpoints is not None:
                return self
            endpoints = {}
            try:
                if self.grpc_port is not None:
                    endpoints["grpc"] = self._start_grpc()
                if self.http_port is not None:
                    endpoints["http"] = self._start_http()
            except BaseException:
                self._stop_servers()
                raise
            self._endpoints = endpoints
        logger.info("OTLP collector listening: gRPC %s, HTTP %s%s", endpoints.get("grpc", "off"),
                    endpoints.get("http", "off"), " (API key required)" if self._api_key else "")
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stop both receivers, letting requests in flight finish for up to `grace` seconds."""
        with self._lock:
            if self._endpoints is None:
                return
            self._stop_servers(grace)
            self._endpoints = None
        self.store.close()
        logger.info("OTLP collector stopped")

    def _stop_servers(self, grace: float = 2.0) -> None:
        # 1. Stop accepting HTTP connections, then close the keep-alive connections still open.
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server.close_connections()
            if self._http_thread is not None:
                self._http_thread.join(timeout=grace)
            self._http_server = None
            self._http_thread = None
        # 2. Let gRPC calls in flight finish within the grace period, then cancel the rest.
        if self._grpc_server is not None:
            self._grpc_server.stop(grace).wait(grace + 1)
            self._grpc_server = None

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoints(self) -> dict[str, str]:
        """The bound receiver URLs, {"grpc": "http://host:port", "http": "http://host:port"}."""
        if self._endpoints is None:
            raise CollectorError("The collector has no endpoints yet because it is not running. Call `start()` first.")
        return dict(self._endpoints)

    @property
    def api_key(self) -> str | None:
        """The API key senders must pass in the `x-otlp-api-key` header or metadata, or None."""
        return self._api_key

    def otlp_environment(self, protocol: str = "grpc") -> dict[str, str]:
        """Return the standard OTEL_EXPORTER_OTLP_* variables that point an SDK at this collector.

        `protocol` is "grpc" or "http/protobuf". The headers variable carries the API key, so the
        result is for a child's environment only; never log or print it.
        """
        transport = {"grpc": "grpc", "http/protobuf": "http", "http": "http"}.get(protocol)
        if transport is None:
            raise ConfigurationError(f"OTLP protocol {protocol!r} is not served. Use 'grpc' or 'http/protobuf'.")
        endpoint = self.endpoints.get(transport)
        if endpoint is None:
            raise CollectorError(
                f"The collector's {transport} receiver is off. Create it with `{transport}_port=0` or a port."
            )

        environment = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc" if transport == "grpc" else "http/protobuf",
        }
        if self._api_key is not None:
            environment["OTEL_EXPORTER_OTLP_HEADERS"] = f"{API_KEY_HEADER}={quote(self._api_key, safe='')}"
        return environment

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    # --- ingest ------------------------------------------------------------------------------------

    def _authorized(self, presented: str | None) -> bool:
        if self._api_key is None:
            return True
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode(), self._api_key.encode())

    def _ingest(self, signal: str, body: bytes, encoding: str) -> Any:
        """Decode, store and build the response for one export request; raises `InvalidExportError`."""
        batch = decode(signal, body, encoding)
        self.store.append(batch)
        if batch.rejected:
            _log_rejection("partial success for a %s export: %s", signal, batch.error_message)
        return export_response(signal, batch)

    # --- gRPC --------------------------------------------------------------------------------------

    def _start_grpc(self) -> str:
        import grpc
        from concurrent import futures

        options = [
            ("grpc.max_receive_message_length", self.limits.grpc_message_bytes),
            # grpcio enables SO_REUSEPORT by default, which would let two collectors share a port silently.
            ("grpc.so_reuseport", 0),
        ]
        executor = futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="homunculy-nb-otlp-grpc")
        server = grpc.server(executor, options=options)
        for signal, service in GRPC_SERVICES.items():
            handler = grpc.unary_unary_rpc_method_handler(self._grpc_handler(signal))
            server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"Export": handler})])

        address = f"{self.host}:{self.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise CollectorError(
                f"Could not bind the OTLP gRPC receiver to {address}: {str(exc).rstrip('.')}. Stop the process "
                f"using port {self.grpc_port} or pass `grpc_port=0` (`--grpc-port 0` on the command line) to pick "
                "a free port."
            ) from exc
        if port == 0:
            raise CollectorError(
                f"Could not bind the OTLP gRPC receiver to {address}. Stop the process using port "
                f"{self.grpc_port} or pass `grpc_port=0` (`--grpc-port 0` on the command line) to pick a free "
                "port."
            )
        server.start()
        self._grpc_server = server
        return self._url(port)

    def _grpc_handler(self, signal: str) -> Callable[[bytes, Any], bytes]:
        import grpc

        def export(request: bytes, context: Any) -> bytes:
            if self._api_key is not None:
                metadata = dict(context.invocation_metadata())
                if not self._authorized(metadata.get(API_KEY_HEADER)):
                    _log_rejection("gRPC UNAUTHENTICATED for a %s export from %s", signal, context.peer())
                    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                  f"Missing or wrong `{API_KEY_HEADER}` metadata; pass the collector's API key.")
            try:
                response = self._ingest(signal, request, "protobuf")
            except InvalidExportError as exc:
                _log_rejection("gRPC INVALID_ARGUMENT for a %s export from %s: %s", signal, context.peer(), exc)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return response.SerializeToString()

        return export

    # --- HTTP --------------------------------------------------------------------------------------

    def _start_http(self) -> str:
        try:
            server = _OTLPHTTPServer((self.host, self.http_port), _OTLPRequestHandler)
        except OSError as exc:
            raise CollectorError(
                f"Could not bind the OTLP HTTP receiver to {self.host}:{self.http_port}: {exc.strerror}. Stop "
                f"the process using port {self.http_port} or pass `http_port=0` (`--http-port 0` on the command "
                "line) to pick a free port."
            ) from exc
        server.collector = self
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="homunculy-nb-otlp-http", daemon=True)
        thread.start()
        self._http_server = server
        self._http_thread = thread
        return self._url(server.server_address[1])

    # --- queries -----------------------------------------------------------------------------------

    def _frame(self, signal: str) -> pd.DataFrame:
        return self.store._frame(signal)

    def stats(self) -> pd.DataFrame:
        """Return received, accepted, rejected, evicted and stored counts, one row per signal."""
        return self.store.stats()

    def on_receive(self, callback: Callback, signals: str | Iterable[str] = SIGNALS) -> Callable[[], None]:
        """Call `callback(signal, frame)` on a background thread with each stored batch; return an unsubscribe.

        The frame holds only the new items, with the columns of `spans()`, `logs()` or `metrics()`.
        Exceptions in the callback are logged and never stop ingest.
        """
        return self.store.on_receive(callback, signals)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the store as Parquet (one file per signal) plus `manifest.json` into directory `path`."""
        return self.store.save(path)

    def clear(self) -> None:
        """Empty the store; the counts in `stats()` keep their totals."""
        self.store.clear()


class _OTLPHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    collector: Collector

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _BodyTooLarge(Exception):
    pass


class _OTLPRequestHandler(BaseHTTPRequestHandler):
    """One OTLP/HTTP connection; HTTP/1.1 keep-alive, so a sender reuses it for every export."""

    protocol_version = "HTTP/1.1"
    server_version = "homunculy-nb-otlp"
    timeout = _IDLE_CONNECTION_TIMEOUT_S
    server: _OTLPHTTPServer

    def setup(self) -> None:
        super().setup()
        # Responses are small and written once; waiting for Nagle's algorithm would stall each export.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_POST(self) -> None:  # noqa: N802 - the base class's naming
        try:
            self._export()
        except ConnectionError as exc:
            # The sender went away mid-request (an app stopped while exporting, or `stop()` closing the
            # connection), so no response can be sent.
            self.close_connection = True
            logger.debug("OTLP/HTTP connection from %s closed during %s %s: %s", self.client_address[0],
                         self.command, self.path, exc)
        except Exception as exc:
            logger.exception("The OTLP/HTTP receiver failed on %s %s", self.command, self.path)
            self._reply_error(500, "json", f"Internal collector error: {type(exc).__name__}: {exc}", close=True)

    def _method_not_allowed(self) -> None:
        self.close_connection = True
        self._reply_error(405, "json", f"Method {self.command} is not allowed on {self.path}; OTLP/HTTP uses POST.",
                          close=True, extra_headers={"Allow": "POST"})

    do_GET = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _method_not_allowed  # noqa: N815

    def _export(self) -> None:
        collector = self.server.collector
        path = self.path.split("?", 1)[0]
        signal = HTTP_PATHS.get(path)
        if signal is None:
            self._reply_error(404, "json", f"No OTLP endpoint at {path}. Use /v1/traces, /v1/metrics or /v1/logs.",
                              close=True)
            return

        content_type = self.headers.get("Content-Type", "")
        media_type = content_type.split(";", 1)[0].strip().lower()
        encoding = MEDIA_TYPES.get(media_type)
        if encoding is None:
            self._reply_error(415, "json", f"Unsupported Content-Type {content_type!r}. Send application/x-protobuf "
                              "or application/json.", close=True)
            return
        if not collector._authorized(self.headers.get(API_KEY_HEADER)):
            self._reply_error(401, encoding, f"Missing or wrong `{API_KEY_HEADER}` header; pass the collector's "
                              "API key.", close=True)
            return

        content_encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if content_encoding not in ("identity", "gzip"):
            self._reply_error(415, encoding, f"Unsupported Content-Encoding {content_encoding!r}. Send gzip or "
                              "an uncompressed body.", close=True)
            return

        limit = collector.limits.http_body_bytes
        try:
            body = self._read_body(limit)
            if content_encoding == "gzip":
                body = _gunzip(body, limit)
        except _BodyTooLarge as exc:
            self._reply_error(413, encoding, str(exc), close=True)
            return
        except InvalidExportError as exc:
            self._reply_error(400, encoding, str(exc))
            return

        try:
            response = collector._ingest(signal, body, encoding)
        except InvalidExportError as exc:
            self._reply_error(400, encoding, str(exc))
            return
        payload = response_json(response) if encoding == "json" else response.SerializeToString()
        self._reply(200, encoding, payload)

    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked(limit)
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise InvalidExportError("The request has neither Content-Length nor chunked Transfer-Encoding.")
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            # A negative length would make rfile.read() wait for the sender to close the connection.
            self.close_connection = True
            raise InvalidExportError(f"Content-Length {length_header!r} is not a non-negative integer.")
        if length > limit:
            raise _BodyTooLarge(f"The body has {length} bytes, more than the collector's limit of {limit} bytes "
                                "(CollectorLimits.http_body_bytes). Send smaller batches.")
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            raise InvalidExportError(f"The body ended after {len(body)} of {length} bytes.")
        return body

    def _read_chunked(self, limit: int) -> bytes:
        parts = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0:
                self.close_connection = True
                raise InvalidExportError(f"Invalid chunk size line {line[:40]!r} in a chunked body: expected a "
                                         "non-negative hexadecimal size.")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                raise _BodyTooLarge(f"The chunked body exceeds the collector's limit of {limit} bytes "
                                    "(CollectorLimits.http_body_bytes). Send smaller batches.")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _reply(self, status: int, encoding: str, payload: bytes, close: bool = False,
               extra_headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if encoding == "json" else "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        # Headers and body go out in one write (end_headers would flush the headers on their own).
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(payload)
        try:
            self.flush_headers()
        except ConnectionError as exc:
            self._headers_buffer = []
            self.close_connection = True
            logger.debug("Could not send the HTTP %d response to %s, which closed the connection: %s", status,
                         self.client_address[0], exc)

    def _reply_error(self, status: int, encoding: str, message: str, close: bool = False,
                     extra_headers: dict[str, str] | None = None) -> None:
        """Reply with a google.rpc.Status body, the error format OTLP/HTTP prescribes."""
        _log_rejection("HTTP %d for %s %s from %s: %s", status, self.command, self.path, self.client_address[0],
                       message)
        code = _RPC_CODES.get(status, 2)
        if encoding == "json":
            import json

            payload = json.dumps({"code": code, "message": message}).encode()
        else:
            from google.rpc import status_pb2

            payload = status_pb2.Status(code=code, message=message).SerializeToString()
        self._reply(status, encoding, payload, close=close, extra_headers=extra_headers)


_rejections = 0
_REJECTIONS_LOGGED_IN_FULL = 20


def _log_rejection(message: str, *args: Any) -> None:
    """Log a rejected request at WARNING; past the first 20, only every 100th, so a broken sender cannot flood."""
    global _rejections
    _rejections += 1
    if _rejections <= _REJECTIONS_LOGGED_IN_FULL or _rejections % 100 == 0:
        logger.warning("Rejected request #%d: " + message, _rejections, *args)


def _gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, stopping once the output passes `limit` so a gzip bomb costs nothing."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        output = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidExportError(f"The gzip body is invalid: {exc}.") from exc
    if len(output) > limit:
        raise _BodyTooLarge(f"The gzip body inflates past the collector's limit of {limit} bytes "
                            "(CollectorLimits.http_body_bytes). Send smaller batches.")
    if not inflater.eof:
        raise InvalidExportError("The gzip body is truncated.")
    return output


def serve(host: str = "127.0.0.1", grpc_port: int = 4317, http_port: int = 4318,
          save_to: str | os.PathLike[str] | None = None, api_key: str | None = None) -> None:
    """Run a standalone collector until SIGINT or SIGTERM, then save the store to `save_to` if given.

    Signal handlers are installed only when called from the main thread; elsewhere it runs until
    KeyboardInterrupt.
    """
    if save_to is not None:
        _check_writable_directory(Path(save_to))

    stopped = threading.Event()
    collector = Collector(host, grpc_port, http_port, api_key=api_key).start()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signals_module.SIGINT, signals_module.SIGTERM):
            previous[number] = signals_module.signal(number, lambda *_: stopped.set())

    endpoints = collector.endpoints
    print(f"OTLP collector listening on gRPC {endpoints['grpc']} and HTTP {endpoints['http']}.", flush=True)
    if save_to is not None:
        print(f"Press Ctrl-C to stop; the telemetry is then saved to {save_to}.", flush=True)
    else:
        print("Press Ctrl-C to stop; nothing is saved because no --save-to directory was given.", flush=True)

    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for number, handler in previous.items():
            signals_module.signal(number, handler)
        collector.stop()
        if save_to is not None:
            try:
                path = collector.save(save_to)
            except OSError as exc:
                # The save can still fail here (directory removed, disk full), so the telemetry goes to a
                # temporary directory instead of being lost.
                fallback = tempfile.mkdtemp(prefix="homunculy-nb-telemetry-")
                print(f"Could not save to {save_to}: {exc}. Saving to {fallback} instead.", file=sys.stderr,
                      flush=True)
                path = collector.save(fallback)
            counts = collector.stats()["stored"].to_dict()
            print(f"Saved {counts['spans']} spans, {counts['logs']} log records and {counts['metrics']} metric "
                  f"points to {path}.", flush=True)


def _check_writable_directory(directory: Path) -> None:
    """Create `directory` and check it takes files, so a bad --save-to fails now and not after the run."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot save telemetry to {str(directory)!r}: {exc.strerror or exc}. Pass a writable directory "
            f"to --save-to."
        ) from exc
