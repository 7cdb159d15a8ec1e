"""pgAdmin for a stack's PostgreSQL servers, with every server registered and no login.

`add_pgadmin(stack)` declares an explicit-start `pgadmin` resource on port 5050 (start it with
`stack.start("pgadmin")`):

- on Docker, the `dpage/pgadmin4` image in desktop mode;
- on the local runtime, `pgadmin4` from PyPI in its own virtual environment under the stack's state
  directory, installed on first start (several minutes and about 600 MB), run by
  `python -m homunculy_nb.pgadmin serve`.

The server list (servers.json) and a pgpass file are computed at launch from the stack's PostgreSQL
servers, with the addresses pgAdmin connects to (service names from a container, 127.0.0.1 from the host).
Both reach pgAdmin through its environment, so no password is written to the stack's files; the local
runtime stores the pgpass file with mode 0600 in pgAdmin's own data folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import venv as venv_module
from pathlib import Path
from typing import Any

from homunculy_nb.errors import ConfigurationError, StateError
from homunculy_nb.expressions import CallableExpression, ResolveContext
from homunculy_nb.parameters import Secret

RESOURCE_NAME = "pgadmin"
DEFAULT_PORT = 5050
IMAGE = "dpage/pgadmin4"
IMAGE_TAG = "9"
CONTAINER_PORT = 80
PING_PATH = "/misc/ping"
PACKAGE = "pgadmin4"

SERVERS_VARIABLE = "HNB_PGADMIN_SERVERS"
PGPASS_VARIABLE = "HNB_PGADMIN_PGPASS"
CONTAINER_SERVERS_FILE = "/tmp/servers.json"
CONTAINER_PGPASS_FILE = "/tmp/pgpass"

# Write the server list and pgpass file from the environment, then hand over to the image's entrypoint.
CONTAINER_ENTRYPOINT = [
    "/bin/sh", "-c",
    f'printf "%s" "${SERVERS_VARIABLE}" > {CONTAINER_SERVERS_FILE} && '
    f'printf "%s\\n" "${PGPASS_VARIABLE}" > {CONTAINER_PGPASS_FILE} && chmod 600 {CONTAINER_PGPASS_FILE} && '
    "exec /entrypoint.sh",
]


def add_pgadmin(stack: Any, port: int | None = DEFAULT_PORT, runtime: str | None = None) -> Any:
    """Declare the explicit-start `pgadmin` resource, or return the one already declared.

    `runtime` is "docker" or "local"; by default Docker when the stack runs on Docker, else local.
    """
    existing = stack.resources.get(RESOURCE_NAME)
    if existing is not None:
        return existing

    runtime = runtime or ("docker" if stack.runtime == "docker" else "local")
    if runtime == "docker":
        resource = _container(stack, port)
    elif runtime == "local":
        resource = _local(stack, port)
    else:
        raise ConfigurationError(f"Invalid pgAdmin runtime {runtime!r}: use \"docker\" or \"local\".")
    return resource.with_http_health_check(PING_PATH).with_explicit_start()


def _container(stack: Any, port: int | None) -> Any:
    # NOTE: no registry was reachable where this was written, so the image's entrypoint contract
    # (PGADMIN_* variables, /entrypoint.sh, servers.json loaded in desktop mode) is untested here.
    password = stack.parameters.get("pgadmin-password") or stack.add_parameter(
        "pgadmin-password", secret=True, generate=True)
    container = (
        stack.add_container(RESOURCE_NAME, IMAGE, IMAGE_TAG)
        .with_http_endpoint(port=port, target_port=CONTAINER_PORT)
        .with_entrypoint(*CONTAINER_ENTRYPOINT)
    )
    # The image exits at start without a login, which desktop mode then never prompts for.
    container.with_environment("PGADMIN_DEFAULT_EMAIL", "admin@example.com")
    container.with_environment("PGADMIN_DEFAULT_PASSWORD", password)
    container.with_environment("PGADMIN_CONFIG_SERVER_MODE", "False")
    container.with_environment("PGADMIN_CONFIG_MASTER_PASSWORD_REQUIRED", "False")
    container.with_environment("PGADMIN_CONFIG_UPGRADE_CHECK_ENABLED", "False")
    container.with_environment("PGADMIN_SERVER_JSON_FILE", CONTAINER_SERVERS_FILE)
    _server_environment(container, stack, CONTAINER_PGPASS_FILE)
    return container


def _local(stack: Any, port: int | None) -> Any:
    home = Path(stack.state_dir) / RESOURCE_NAME
    app = stack.add_python_app(RESOURCE_NAME, "homunculy_nb.pgadmin").with_http_endpoint(port=port)
    app.with_args("serve", "--home", str(home), "--port", app.endpoint("http").port)

    # The child must import this homunculy_nb, wherever it was loaded from.
    package_root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    app.with_environment("PYTHONPATH", package_root + (os.pathsep + existing if existing else ""))
    _server_environment(app, stack, str(home / "data" / "pgpass"))
    return app


def _server_environment(resource: Any, stack: Any, pgpass_path: str) -> None:
    resource.with_environment(SERVERS_VARIABLE, CallableExpression(
        lambda context: servers_json(stack, context, pgpass_path), "pgAdmin server list"))
    resource.with_environment(PGPASS_VARIABLE, CallableExpression(
        lambda context: pgpass(stack, context), "pgAdmin pgpass lines"))
    for server in postgres_servers(stack):
        resource.wait_for(server)


def postgres_servers(stack: Any) -> list[Any]:
    """Return the stack's PostgreSQL servers in declaration order."""
    return [resource for resource in stack.resources.values() if resource.kind == "postgres"]


def _address(server: Any, context: ResolveContext) -> tuple[str, int] | None:
    try:
        return str(server.host.resolve(context)), int(server.port.resolve(context))
    except StateError:
        return None  # declared but not launched yet: pgAdmin lists what it can reach


def servers_json(stack: Any, context: ResolveContext, pgpass_path: str) -> str:
    """Return pgAdmin's servers.json for the stack's PostgreSQL servers, as seen from `context`."""
    servers = {}
    for index, server in enumerate(postgres_servers(stack), start=1):
        address = _address(server, context)
        if address is None:
            continue
        databases = [database.database_name for database in server.databases.values()]
        servers[str(index)] = {
            "Name": server.name,
            "Group": stack.name,
            "Host": address[0],
            "Port": address[1],
            "MaintenanceDB": databases[0] if databases else "postgres",
            "Username": server.user,
            "SSLMode": "prefer",
            "PassFile": pgpass_path,
        }
    return json.dumps({"Servers": servers})


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def pgpass(stack: Any, context: ResolveContext) -> Secret | str:
    """Return pgpass lines (host:port:*:user:password) for the servers; a `Secret` since it contains passwords."""
    lines = []
    for server in postgres_servers(stack):
        address = _address(server, context)
        if address is None:
            continue
        if context.parameter is not None:
            password = context.parameter(server.password)
        else:
            value = server.password.value
            password = value.reveal() if isinstance(value, Secret) else str(value)
        lines.append(":".join([_pgpass_field(address[0]), str(address[1]), "*", _pgpass_field(server.user),
                               _pgpass_field(password)]))
    return Secret("\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# The local runtime's launcher


def _run(command: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def ensure_installed(venv_dir: Path) -> Path:
    """Create `venv_dir` with pgadmin4 installed unless it has it; return its pgadmin4 command."""
    command = venv_dir / "bin" / "pgadmin4"
    if command.exists():
        return command

    print(f"Installing {PACKAGE} into {venv_dir}; this takes several minutes on first start", flush=True)
    venv_module.EnvBuilder(with_pip=True, clear=venv_dir.exists()).create(venv_dir)
    _run([str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", PACKAGE],
         dict(os.environ))
    return command


def write_config(home: Path, port: int) -> Path:
    """Write pgAdmin's configuration for desktop mode (no login) on 127.0.0.1:`port`; return its path."""
    data = home / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = home / "config_homunculy_nb.py"
    settings = {
        "SERVER_MODE": False,
        "MASTER_PASSWORD_REQUIRED": False,
        "DEFAULT_SERVER": "127.0.0.1",
        "DEFAULT_SERVER_PORT": port,
        "DATA_DIR": str(data),
        "UPGRADE_CHECK_ENABLED": False,
    }
    config.write_text("".join(f"{key} = {value!r}\n" for key, value in settings.items()))
    return config


def serve(home: Path, port: int, venv_dir: Path | None = None) -> None:
    """Install pgAdmin if needed, register the servers from the environment, and replace this process with it."""
    command = ensure_installed(venv_dir or home / "venv")
    cli = command.with_name("pgadmin4-cli")
    config = write_config(home, port)
    env = dict(os.environ, CONFIG_DISTRO_FILE_PATH=str(config))

    data = home / "data"
    pgpass_file = data / "pgpass"
    pgpass_file.touch(mode=0o600)
    pgpass_file.chmod(0o600)
    pgpass_file.write_text(os.environ.get(PGPASS_VARIABLE, "") + "\n")
    servers_file = data / "servers.json"
    servers_file.write_text(os.environ.get(SERVERS_VARIABLE, '{"Servers": {}}'))

    if not (data / "pgadmin4.db").exists():
        _run([str(cli), "setup-db"], env)
    _run([str(cli), "load-servers", str(servers_file), "--replace"], env)

    print(f"Starting pgAdmin on http://127.0.0.1:{port}", flush=True)
    os.execve(str(command), [str(command)], env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homunculy_nb.pgadmin",
                                     description="Run pgAdmin for a stack's PostgreSQL servers.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="install pgAdmin if needed, register the servers and run it")
    run.add_argument("--home", type=Path, required=True, help="folder for pgAdmin's data and virtual environment")
    run.add_argument("--port", type=int, required=True, help="port to listen on, on 127.0.0.1")
    run.add_argument("--venv", type=Path, default=None,
                     help="virtual environment with pgadmin4 (default: HOME/venv, created when missing)")
    args = parser.parse_args(argv)

    try:
        serve(args.home, args.port, args.venv or _venv_from_environment())
    except subprocess.CalledProcessError as exc:
        print(f"Command failed with exit code {exc.returncode}: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return 1
    return 0


def _venv_from_environment() -> Path | None:
    value = os.environ.get("HOMUNCULY_NB_PGADMIN_VENV")
    return Path(value) if value else None


if __name__ == "__main__":
    sys.exit(main())
