"""ChatClient argument checks and URL redaction, found by driving the client as a notebook user."""

import pytest

from homunculy_nb.chat import ChatClient
from homunculy_nb.errors import ConfigurationError

URL = "ws://127.0.0.1:9/api/v1/ws/chat"


def test_repr_hides_query_token():
    client = ChatClient("ws://user:pw@127.0.0.1:9/chat?token=SECRET1&api_key=SECRET2")

    shown = repr(client)
    assert "SECRET1" not in shown
    assert "SECRET2" not in shown
    assert "pw" not in shown
    assert "token=REDACTED" in shown
    assert "api_key=REDACTED" in shown
    assert "127.0.0.1:9/chat" in shown


def test_connection_error_hides_query_token():
    client = ChatClient("ws://127.0.0.1:9/chat?token=SECRET1", open_timeout=5)

    with pytest.raises(Exception) as caught:
        client.connect()
    assert "SECRET1" not in str(caught.value)
    assert "token=REDACTED" in str(caught.value)


def test_url_without_secrets_unchanged():
    assert repr(ChatClient(URL)).startswith(f"<ChatClient {URL} ")


@pytest.mark.parametrize(("argument", "value"), [
    ("user_id", 5),
    ("configuration", "friendly"),
    ("ping_interval", -5),
    ("ping_timeout", 0),
])
def test_client_rejects_bad_argument(argument, value):
    with pytest.raises(ConfigurationError) as caught:
        ChatClient(URL, **{argument: value})
    assert f"`{argument}`" in str(caught.value)


def test_client_allows_keepalive_off():
    client = ChatClient(URL, ping_interval=None, ping_timeout=None)

    assert client.ping_interval is None
    assert client.ping_timeout is None


@pytest.mark.parametrize("timeout", [0, -1])
def test_ping_rejects_bad_timeout(timeout):
    client = ChatClient(URL)

    with pytest.raises(ConfigurationError) as caught:
        client.ping(timeout=timeout)
    assert repr(timeout) in str(caught.value)
