"""Wording of the typed error raised for the agent's `error` frames."""

from homunculy_nb.chat import ChatProtocolError, ChatServerError, server_error
from homunculy_nb.chat_turn import Turn, TurnError


def _failed_turn(code: str, message: str) -> Turn:
    turn = Turn(message="hello", user_id="qa")
    turn.error = TurnError(code, message)
    return turn


def test_server_error_single_period():
    error = server_error(_failed_turn("INVALID_JSON", "The frame is not valid JSON."))

    assert isinstance(error, ChatProtocolError)
    assert "The frame is not valid JSON. The connection" in str(error)
    assert ".." not in str(error)
    assert error.server_message == "The frame is not valid JSON."


def test_server_error_without_message():
    error = server_error(_failed_turn("UNKNOWN", ""))

    assert type(error) is ChatServerError
    assert "error UNKNOWN: (the frame had no message)." in str(error)
    assert error.server_message == ""
