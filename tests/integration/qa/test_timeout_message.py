"""A startup timeout says what each waiting resource still waits for."""

from __future__ import annotations

import pytest

from homunculy_nb.errors import StartupError

pytestmark = pytest.mark.integration


def test_timeout_names_pending_waits(make_stack):
    stack = make_stack("timeout")
    server = stack.add_executable("server", "sleep", ["300"]).with_health_check(lambda: False)
    job = stack.add_executable("job", "sleep", ["300"])
    stack.add_executable("app", "sleep", ["300"]).wait_for(server).wait_for_completion(job)

    with pytest.raises(StartupError) as raised:
        stack.up(timeout=2)

    message = str(raised.value)
    assert "`app` is Waiting for `server` healthy, `job` completed" in message
    assert "`server` is Running (check <lambda> returned False)" in message
