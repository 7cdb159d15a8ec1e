"""run_sessions and summarize with the odd arguments a notebook passes."""

import math

import numpy as np
import pytest

from homunculy_nb.chat_load import run_sessions, summarize
from homunculy_nb.errors import ConfigurationError


def test_generator_messages_used_in_order(agent):
    frame = run_sessions(agent.url, sessions=1, turns=3, messages=(text for text in ["a", "b"]), progress=False)

    assert frame["message"].tolist() == ["a", "b", "a"]
    assert frame["error_code"].isna().all()


def test_empty_generator_messages_rejected():
    with pytest.raises(ConfigurationError) as caught:
        run_sessions("ws://127.0.0.1:9/", messages=(text for text in []), progress=False)
    assert "`messages` must be a non-empty list" in str(caught.value)


def test_numpy_counts_accepted(agent):
    frame = run_sessions(agent.url, sessions=np.int64(2), turns=np.int32(1), concurrency=np.int64(5),
                         progress=False)

    assert len(frame) == 2
    assert frame["session"].tolist() == [0, 1]


@pytest.mark.parametrize("think_time_ms", [math.inf, math.nan, -1])
def test_unbounded_think_time_rejected(think_time_ms):
    with pytest.raises(ConfigurationError) as caught:
        run_sessions("ws://127.0.0.1:9/", think_time_ms=think_time_ms, progress=False)
    assert "`think_time_ms`" in str(caught.value)
    assert repr(think_time_ms) in str(caught.value)


@pytest.mark.parametrize("value", [[], None, {"duration_ms": [1.0]}])
def test_summarize_rejects_non_frame(value):
    with pytest.raises(ConfigurationError) as caught:
        summarize(value)
    assert type(value).__name__ in str(caught.value)
    assert "run_sessions()" in str(caught.value)
