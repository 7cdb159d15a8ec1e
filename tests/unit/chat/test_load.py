"""run_sessions and summarize against the scripted agent server, which counts open connections."""

from __future__ import annotations

import asyncio
import socket

import numpy as np
import pandas as pd
import pytest

from homunculy_nb.chat import run_sessions, run_sessions_async, summarize
from homunculy_nb.chat_load import COLUMN_TYPES
from homunculy_nb.errors import ConfigurationError


def test_rows_per_turn_without_errors(agent, wait_until):
    frame = run_sessions(agent.url, sessions=12, turns=3, concurrency=4, progress=False)

    assert len(frame) == 36
    assert frame["error_code"].isna().all()
    assert list(frame.columns) == list(COLUMN_TYPES)
    assert frame.groupby("session")["turn"].apply(list).tolist() == [[0, 1, 2]] * 12
    assert frame["trace_id"].nunique() == 36
    assert frame.groupby("session")["user_id"].nunique().eq(1).all()
    assert frame["user_id"].nunique() == 12
    assert (frame["time_to_first_chunk_ms"] <= frame["duration_ms"]).all()
    assert (frame["audio_bytes"] == 3000).all()
    assert wait_until(lambda: agent.open_connections == 0)
    assert 1 <= agent.max_open_connections <= 4
    assert agent.total_connections == 12


def test_messages_list_and_callable(agent):
    listed = run_sessions(agent.url, sessions=2, turns=3, messages=["a", "b"], progress=False)
    called = run_sessions(agent.url, sessions=2, turns=1, messages=lambda session, turn: f"s{session}",
                          progress=False)

    assert listed["message"].tolist() == ["a", "b", "a", "a", "b", "a"]
    assert called["message"].tolist() == ["s0", "s1"]
    assert called["error_code"].isna().all()


def test_timeout_cuts_off_and_closes_connections(agent, wait_until):
    frame = run_sessions(agent.url, sessions=6, turns=2, concurrency=3, messages=["!slow story"], timeout=1.0,
                         progress=False)

    assert len(frame) == 12
    assert set(frame["error_code"].dropna()) <= {"CANCELLED", "NOT_STARTED"}
    assert frame["error_code"].notna().any()
    assert wait_until(lambda: agent.open_connections == 0)
    assert agent.max_open_connections <= 3


def test_failures_recorded_per_turn(agent, wait_until):
    frame = run_sessions(agent.url, sessions=3, turns=3, messages=["hello", "!close1011", ""], progress=False)

    assert frame["error_code"].fillna("-").tolist() == ["-", "CONNECTION_CLOSED", "INVALID_REQUEST"] * 3
    assert wait_until(lambda: agent.open_connections == 0)
    # The session reconnected after the close, so each session opened two connections.
    assert agent.total_connections == 6


def test_timeouts_recorded(agent, wait_until):
    frame = run_sessions(agent.url, sessions=2, turns=2, messages=["!stall", "after"], turn_timeout=0.3,
                         progress=False)

    assert frame["error_code"].fillna("-").tolist() == ["TURN_TIMEOUT", "-"] * 2
    assert (frame.loc[frame["turn"] == 0, "text_chunks"] == 2).all()
    assert wait_until(lambda: agent.open_connections == 0)


def test_refused_connections_recorded():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    frame = run_sessions(f"ws://127.0.0.1:{port}/api/v1/ws/chat", sessions=2, turns=2, progress=False)

    assert frame["error_code"].tolist() == ["CONNECTION_FAILED"] * 4
    assert frame["error_message"].str.contains(str(port)).all()


def test_empty_reply_flagged(agent):
    frame = run_sessions(agent.url, sessions=1, turns=1, messages=["!empty"], progress=False)

    assert frame["error_code"].tolist() == ["EMPTY_RESPONSE"]


def test_sync_call_inside_running_loop(agent):
    async def cell():
        return run_sessions(agent.url, sessions=3, turns=1, progress=False)

    frame = asyncio.run(cell())

    assert frame["error_code"].isna().all()


def test_async_twin(agent, wait_until):
    frame = asyncio.run(run_sessions_async(agent.url, sessions=3, turns=2, progress=False))

    assert len(frame) == 6
    assert frame["error_code"].isna().all()
    assert wait_until(lambda: agent.open_connections == 0)


def test_progress_bar_counts_turns(agent, capsys):
    run_sessions(agent.url, sessions=2, turns=2, progress=True)

    assert "4/4" in capsys.readouterr().err


def test_trace_ids_reach_receiver(agent, trace_receiver, wait_until):
    frame = run_sessions(agent.url, sessions=4, turns=2, otlp_endpoint=trace_receiver.endpoint, progress=False)

    assert wait_until(lambda: set(frame["trace_id"]) <= trace_receiver.trace_ids())


@pytest.mark.parametrize(("option", "value"), [
    ("sessions", 0), ("turns", -1), ("concurrency", 1.5), ("think_time_ms", -5), ("messages", []),
    ("messages", "hello"), ("timeout", 0),
])
def test_invalid_arguments_rejected(option, value):
    with pytest.raises(ConfigurationError, match=option):
        run_sessions("ws://127.0.0.1:1/x", **{option: value})


def test_summarize_percentiles_and_errors():
    rng = np.random.default_rng(7)
    durations = rng.uniform(10, 500, 100)
    frame = pd.DataFrame({
        "time_to_first_chunk_ms": durations / 10,
        "time_to_first_audio_ms": [None] * 100,
        "duration_ms": durations,
        "error_code": ["TURN_TIMEOUT"] * 3 + ["INVALID_REQUEST"] * 2 + [None] * 95,
    }).astype({"time_to_first_audio_ms": "Float64", "error_code": "string"})

    summary = summarize(frame)

    assert summary.timings.loc["duration_ms", "p50"] == pytest.approx(np.percentile(durations, 50))
    assert summary.timings.loc["duration_ms", "p95"] == pytest.approx(np.percentile(durations, 95))
    assert summary.timings.loc["duration_ms", "p99"] == pytest.approx(np.percentile(durations, 99))
    assert summary.timings.loc["time_to_first_audio_ms", "count"] == 0
    assert summary.errors.to_dict() == {"TURN_TIMEOUT": 3, "INVALID_REQUEST": 2}
    assert summary.error_count == 5
    assert summary.turns == 100
    assert "TURN_TIMEOUT 3" in repr(summary)


def test_summarize_run(agent):
    frame = run_sessions(agent.url, sessions=3, turns=2, progress=False)

    summary = summarize(frame)

    assert summary.error_count == 0
    assert summary.timings.loc["time_to_first_chunk_ms", "count"] == 6
    assert summary.turns_per_second > 0


def test_summarize_rejects_other_frames():
    with pytest.raises(ConfigurationError, match="run_sessions"):
        summarize(pd.DataFrame({"x": [1]}))


def test_invalid_url_rejected_before_run():
    with pytest.raises(ConfigurationError, match="ws://"):
        run_sessions("http://127.0.0.1:1/api/v1/ws/chat", sessions=2, progress=False)
