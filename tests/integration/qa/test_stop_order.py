"""down() with resources that depend on each other in a cycle: it must return and stop every process."""

from __future__ import annotations

import threading

import psutil
import pytest

from homunculy_nb.errors import ConfigurationError

pytestmark = pytest.mark.integration


def pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def down_in_thread(stack) -> None:
    """Run `stack.down()` with a generous bound, so a deadlock fails the test instead of hanging it."""
    thread = threading.Thread(target=stack.down, kwargs={"timeout": 10}, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "stack.down() did not return within 60 s"


def test_down_with_mutual_references(make_stack):
    stack = make_stack("mutual")
    first = stack.add_executable("first", "sleep", ["300"]).with_http_endpoint()
    second = stack.add_executable("second", "sleep", ["300"]).with_http_endpoint()
    stack.add_executable("outside", "sleep", ["300"]).with_reference(first)
    first.with_reference(second)
    second.with_reference(first)
    stack.up(timeout=60)
    pids = stack.status().set_index("name")["pid"].to_dict()

    down_in_thread(stack)

    states = stack.status().set_index("name")["state"].to_dict()
    assert states == {"first": "Stopped", "second": "Stopped", "outside": "Stopped"}
    for name in ("first", "second", "outside"):
        assert not pid_alive(int(pids[name])), name


def test_down_after_rejected_wait_cycle(make_stack):
    stack = make_stack("cycle")
    first = stack.add_executable("first", "sleep", ["300"])
    second = stack.add_executable("second", "sleep", ["300"])
    first.wait_for(second)
    second.wait_for(first)

    with pytest.raises(ConfigurationError, match="cycle"):
        stack.up(timeout=60)

    down_in_thread(stack)
