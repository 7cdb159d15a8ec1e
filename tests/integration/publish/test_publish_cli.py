"""`homunculy-nb publish STACKFILE --target ... --out ...` writes the same files as `stack.publish()`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import homunculy_nb

pytestmark = pytest.mark.integration

STACK_FILE = textwrap.dedent("""\
    from homunculy_nb.stack import Stack

    stack = Stack("cli-shop")
    password = stack.add_parameter("db-password", secret=True, value="cli-known-secret-8080")
    server = stack.add_postgres("db", password=password)
    database = server.add_database("orders")
    stack.add_container("web", "nginx", "1.25").with_http_endpoint(port=9480, target_port=80, external=True) \\
        .with_reference(database).wait_for(server)
""")


@pytest.mark.parametrize("target", ["compose", "kubernetes"])
def test_cli_publish_writes_files(tmp_path, target, secrets_path):
    stack_file = tmp_path / "shop_stack.py"
    stack_file.write_text(STACK_FILE)
    out = tmp_path / target
    env = dict(os.environ, PYTHONPATH=str(Path(homunculy_nb.__file__).parents[1]),
               HOMUNCULY_NB_SECRETS_FILE=str(secrets_path))

    result = subprocess.run([sys.executable, "-m", "homunculy_nb", "publish", str(stack_file), "--target", target,
                             "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    printed = [Path(line) for line in result.stdout.splitlines()]
    assert printed and all(path.is_file() for path in printed)
    text = "\n".join(path.read_text() for path in printed)
    assert "cli-known-secret-8080" not in text
    if target == "compose":
        services = yaml.safe_load((out / "docker-compose.yaml").read_text())["services"]
        assert services["web"]["environment"]["ORDERS_HOST"] == "db"
        assert services["web"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    else:
        assert (out / "db.yaml").is_file()
        assert (out / "web.yaml").is_file()
