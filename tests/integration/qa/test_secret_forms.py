"""A secret printed in the escaped forms apps use (JSON, repr, URL quoting) is masked like the plain value."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.integration

SECRET = 'qx"zz\\wörd/ü 42'
FRAGMENT = "zz"
"""A part of the secret that survives every escaping, so finding it means a form was not masked."""

PRINT_FORMS = textwrap.dedent("""
    import json, os, sys, time, urllib.parse
    secret = os.environ["SECRET"]
    print("plain", secret)
    print(json.dumps({"secret": secret}))
    print(json.dumps({"secret": secret}, ensure_ascii=False))
    print("repr", repr(secret), ascii(secret))
    print("url", urllib.parse.quote(secret), urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe=""))
    print("done")
    sys.stdout.flush()
    time.sleep(300)
""")


def test_escaped_secret_forms_masked(make_stack, tmp_path):
    script = tmp_path / "print_forms.py"
    script.write_text(PRINT_FORMS)
    stack = make_stack("forms")
    secret = stack.add_parameter("secret", secret=True, default=SECRET)
    stack.add_executable("app", sys.executable, [str(script)]).with_environment("SECRET", secret)
    stack.up(timeout=60)

    lines: list[str] = []
    deadline = time.monotonic() + 60
    while "done" not in lines and time.monotonic() < deadline:
        time.sleep(0.05)
        lines = stack.logs("app").line.tolist()
    log_file = (stack.state_dir / "logs" / "app.log").read_text(encoding="utf-8")

    assert "done" in lines
    assert len(lines) == 6
    for line in lines[:-1]:
        assert "********" in line, line
        assert FRAGMENT not in line, line
    assert FRAGMENT not in log_file
