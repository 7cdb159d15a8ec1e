"""OTLP/HTTP requests with broken framing, pathological JSON or a vanished sender: no hang, no 500."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time

import httpx
import pytest

from homunculy_nb.collector import Collector

pytestmark = pytest.mark.integration

VALID_BODY = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{
    "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "after",
    "startTimeUnixNano": "1", "endTimeUnixNano": "2"}]}]}]}).encode()


@pytest.fixture
def collector():
    with Collector(grpc_port=None, http_port=0) as running:
        yield running


def send_raw(collector: Collector, head: bytes, body: bytes) -> bytes:
    """Send one request over a plain socket and return the start of the response (b"" on timeout)."""
    port = int(collector.endpoints["http"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           + head + b"\r\n" + body)
        try:
            return connection.recv(4096)
        except socket.timeout:
            return b""


def assert_valid_export_succeeds(collector: Collector) -> None:
    response = httpx.post(collector.endpoints["http"] + "/v1/traces", content=VALID_BODY,
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 200
    assert "after" in collector.spans().name.tolist()


def test_negative_content_length_is_400(collector):
    response = send_raw(collector, b"Content-Length: -1\r\n", b"{}")

    assert response.startswith(b"HTTP/1.1 400 "), response
    assert b"Content-Length '-1'" in response
    assert_valid_export_succeeds(collector)


def test_negative_chunk_size_is_400(collector):
    response = send_raw(collector, b"Transfer-Encoding: chunked\r\n", b"-5\r\n{}\r\n0\r\n\r\n")

    assert response.startswith(b"HTTP/1.1 400 "), response
    assert b"chunk size" in response
    assert_valid_export_succeeds(collector)


def test_deeply_nested_json_is_400(collector):
    body = b'{"resourceSpans":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    response = httpx.post(collector.endpoints["http"] + "/v1/traces", content=body,
                          headers={"Content-Type": "application/json"}, timeout=30)

    assert response.status_code == 400
    assert "too deeply" in response.json()["message"]
    assert_valid_export_succeeds(collector)


def test_sender_reset_logs_no_traceback(collector, caplog, capfd):
    port = int(collector.endpoints["http"].rsplit(":", 1)[1])
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{")
    wait_until_reading(collector)
    # Linger 0 makes close() send a TCP reset, as a killed sender's kernel does with unread data.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()

    assert_valid_export_succeeds(collector)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]
    assert errors == []
    assert "Traceback" not in capfd.readouterr().err
    assert "HTTP 500" not in caplog.text


def wait_until_reading(collector: Collector) -> None:
    """Wait until the HTTP receiver has a connection open, so the request is being read."""
    server = collector._http_server
    deadline = time.monotonic() + 30
    while not server._connections and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
