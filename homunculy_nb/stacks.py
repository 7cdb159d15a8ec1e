"""The Homunculy topology in one call: `homunculy_stack()`.

Offline (the default), it runs the reference services of `homunculy_nb.services`, which speak the real
services' protocols, with a local LLM stand-in when no OpenAI key is set. Given `source=` (a checkout of
the real Homunculy repository), it runs the real agent service from `homunculy/src` in its own virtual
environment, the real changelogs, and the real management service with `go run` when Go is installed.

The module is also the command the checkout's resources run:
`python -m homunculy_nb.stacks create-venv VENV --python PYTHON`,
`python -m homunculy_nb.stacks install VENV PROJECT [--package NAME ...]` and
`python -m homunculy_nb.stacks exec VENV PROGRAM [ARG ...]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.expressions import ReferenceExpression
from homunculy_nb.stack import PostgresServer, Resource, Stack

SERVICES_DIR = Path(__file__).resolve().parent / "services"
PACKAGE_ROOT = SERVICES_DIR.parent.parent

DEFAULT_PORTS = {"homunculy-postgres": 5433, "management-postgres": 5434, "homunculy-app": 8000,
                 "management-app": 8080}
LLM_CHOICES = ("auto", "local")
TTS_CHOICES = ("auto", "local", "elevenlabs", "espeak-ng", "tone")
MANAGEMENT_CHOICES = ("auto", "reference", "go")

# Zero-code OpenTelemetry for the real agent service, which has no instrumentation of its own.
AGENT_INSTRUMENTATION_PACKAGES = (
    "opentelemetry-distro", "opentelemetry-instrumentation-fastapi", "opentelemetry-instrumentation-httpx",
    "opentelemetry-instrumentation-psycopg", "opentelemetry-instrumentation-asyncpg",
)
INSTALL_STAMP = ".homunculy-nb-installed"


def homunculy_stack(source: str | os.PathLike | None = None, collector: Any = None, llm: str = "auto",
                    tts: str = "auto", ports: str = "default", management: str = "auto", *,
                    name: str = "homunculy", state_dir: str | os.PathLike | None = None,
                    python: str = "python3.12") -> Stack:
    """Declare the Homunculy stack: two PostgreSQL servers, their migrations, the agent and management apps.

    - `llm`: "auto" uses OpenAI when the `openai-api-key` parameter has a value, else a local stand-in.
      The key is checked now, at declaration. "local" forces the stand-in, and a URL selects any
      OpenAI-compatible server by its base, such as `http://127.0.0.1:11434/v1`.
    - `tts`: "auto" uses ElevenLabs when `elevenlabs-api-key` has a value, else the local synthesizer
      ("espeak-ng" or "tone" choose one; "local" lets the agent pick).
    - `ports`: "default" binds 5433, 5434, 8000 and 8080; "auto" allocates free ports so two stacks can run
      side by side (give them different `name`s).
    - `source`: a checkout of the Homunculy repository to run the real services from; `python` is the
      interpreter its virtual environment is created with. `management`: "auto" runs the checkout's Go
      service (Go required) or, without `source`, the reference one; "reference" forces the reference one.
    """
    if ports not in ("default", "auto"):
        raise ConfigurationError(f"Invalid ports={ports!r}: use \"default\" (5433, 5434, 8000, 8080) or \"auto\".")
    if tts not in TTS_CHOICES:
        raise ConfigurationError(f"Invalid tts={tts!r}: use one of {', '.join(TTS_CHOICES)}.")
    if management not in MANAGEMENT_CHOICES:
        raise ConfigurationError(f"Invalid management={management!r}: use \"auto\", \"reference\" or \"go\".")
    if llm not in LLM_CHOICES and not str(llm).startswith(("http://", "https://")):
        raise ConfigurationError(f"Invalid llm={llm!r}: use \"auto\", \"local\" or an http(s):// base URL.")
    checkout = _Checkout(Path(source).expanduser().resolve(), python) if source is not None else None
    if management == "go" and checkout is None:
        raise ConfigurationError("management=\"go\" runs the checkout's Go service, so it needs source=.")

    caller = sys._getframe(1).f_globals.get("__file__")
    stack = Stack(name, state_dir=state_dir, collector=collector,
                  source_dir=Path(caller).resolve().parent if caller else Path.cwd())

    def port(resource: str) -> int | None:
        return DEFAULT_PORTS[resource] if ports == "default" else None

    homunculy_password = stack.add_parameter("homunculy-db-password", secret=True, generate=True)
    management_password = stack.add_parameter("management-db-password", secret=True, generate=True)
    openai_key = stack.add_parameter("openai-api-key", secret=True)
    elevenlabs_key = stack.add_parameter("elevenlabs-api-key", secret=True)
    homunculy_api_key = stack.add_parameter("homunculy-api-key", secret=True, generate=True)

    homunculy_db_server = stack.add_postgres("homunculy-postgres", port=port("homunculy-postgres"),
                                             password=homunculy_password).with_data_volume()
    homunculy_db = homunculy_db_server.add_database("homunculy")
    homunculy_migrations = stack.add_migrations(
        "homunculy-migrations",
        checkout.changelog("homunculy-db") if checkout else SERVICES_DIR / "agent" / "changelog" / "changelog.xml",
        homunculy_db,
    )

    management_db_server = stack.add_postgres("management-postgres", port=port("management-postgres"),
                                              password=management_password).with_data_volume()
    management_db = management_db_server.add_database("management")
    # The changelog goes with the service that reads the schema: the reference service needs its own.
    use_go = checkout is not None and management in ("auto", "go")
    management_migrations = stack.add_migrations(
        "management-migrations",
        checkout.changelog("management-service-db") if use_go else
        SERVICES_DIR / "management" / "changelog" / "changelog.xml",
        management_db,
    )

    llm_resource = None
    if llm == "local" or (llm == "auto" and not openai_key.has_value):
        llm_resource = (
            _reference_app(stack, "llm", "homunculy_nb.services.llm:app", None)
            .with_http_health_check("/health")
            .with_otlp_exporter()
        )

    if checkout is not None:
        agent = checkout.add_agent(stack, port("homunculy-app"), collector is not None)
    else:
        agent = _reference_app(stack, "homunculy-app", "homunculy_nb.services.agent:app", port("homunculy-app"))
    agent.with_http_health_check("/health").with_otlp_exporter().wait_for_completion(homunculy_migrations)
    _agent_environment(agent, homunculy_db_server, homunculy_password, openai_key, elevenlabs_key, llm,
                       llm_resource, tts)
    if llm_resource is not None:
        agent.wait_for(llm_resource)

    if use_go:
        manager = checkout.add_management(stack, port("management-app"))
    else:
        manager = _reference_app(stack, "management-app", "homunculy_nb.services.management:app",
                                 port("management-app"))
    (
        manager.with_http_health_check("/api/v1/health")
        .with_otlp_exporter()
        .wait_for_completion(management_migrations)
        .wait_for(agent)
    )
    _management_environment(manager, management_db_server, management_password, agent, homunculy_api_key)
    for app in (agent, manager):
        _expose(app, DEFAULT_PORTS[app.name])
    return stack


def _expose(app: Resource, default_port: int) -> None:
    """Mark the app's HTTP endpoint external, so published files map it to the contract's host port.

    With allocated ports the contract's port becomes the target port, which only published files use,
    so both `ports` choices publish the same files.
    """
    endpoint = app.endpoints["http"]
    endpoint.is_external = True
    if endpoint.port is None and endpoint.target_port is None:
        endpoint.target_port = default_port


def agent_telemetry_packages() -> list[str]:
    """Return the OpenTelemetry packages for the checkout's agent, pinned to the versions installed here.

    Unpinned, pip backtracks through dozens of mutually incompatible releases before giving up.
    """
    from importlib.metadata import version

    sdk, instrumentation = version("opentelemetry-sdk"), version("opentelemetry-instrumentation")
    return [f"opentelemetry-exporter-otlp=={sdk}",
            *(f"{package}=={instrumentation}" for package in AGENT_INSTRUMENTATION_PACKAGES)]


# -- environment ------------------------------------------------------------------------------------


def _reference_app(stack: Stack, name: str, app: str, port: int | None) -> Resource:
    resource = stack.add_uvicorn_app(name, app, port=port)
    # The child must import this homunculy_nb, wherever it was loaded from.
    existing = os.environ.get("PYTHONPATH")
    resource.with_environment("PYTHONPATH", str(PACKAGE_ROOT) + (os.pathsep + existing if existing else ""))
    return resource


def _database_environment(resource: Resource, server: PostgresServer, password: Any, database: str) -> None:
    resource.with_environment("DB_HOST", server.host)
    resource.with_environment("DB_PORT", server.port)
    resource.with_environment("DB_NAME", database)
    resource.with_environment("DB_USER", server.user)
    resource.with_environment("DB_PASSWORD", password)


def _agent_environment(agent: Resource, server: PostgresServer, password: Any, openai_key: Any,
                       elevenlabs_key: Any, llm: str, llm_resource: Resource | None, tts: str) -> None:
    http = agent.endpoint("http")
    agent.with_environment("APP_HOST", "127.0.0.1")
    agent.with_environment("APP_PORT", http.port)
    agent.with_environment("APP_DEBUG", "false")
    _database_environment(agent, server, password, "homunculy")

    agent.with_environment("LLM_PROVIDER", "openai")
    if llm_resource is not None:
        base_url: Any = ReferenceExpression("{}/v1", llm_resource.endpoint("http").url)
        # The real service exits at start-up without a key; any value works against the stand-in.
        agent.with_environment("LLM_OPENAI_API_KEY", openai_key if openai_key.has_value else "local-stand-in")
    else:
        base_url = llm if llm.startswith(("http://", "https://")) else "https://api.openai.com/v1"
        agent.with_environment("LLM_OPENAI_API_KEY", openai_key if openai_key.has_value else "not-needed")
    # The real service's OpenAI client reads OPENAI_BASE_URL; the reference service reads both.
    agent.with_environment("LLM_OPENAI_BASE_URL", base_url)
    agent.with_environment("OPENAI_BASE_URL", base_url)
    agent.with_environment("LLM_DEFAULT_MODEL", "gpt-4o-mini")
    agent.with_environment("LLM_DEFAULT_TEMPERATURE", "0.7")
    agent.with_environment("LLM_DEFAULT_MAX_TOKENS", "2000")

    agent.with_environment("TTS_PROVIDER", "elevenlabs")
    agent.with_environment("TTS_ELEVENLABS_MODEL_ID", "eleven_multilingual_v2")
    agent.with_environment("TTS_ELEVENLABS_STREAMING_MODEL_ID", "eleven_turbo_v2_5")
    if tts == "elevenlabs" and not elevenlabs_key.has_value:
        raise ConfigurationError(
            "tts=\"elevenlabs\" needs the `elevenlabs-api-key` parameter. Set it with "
            f"`{elevenlabs_key.set_command()}`, or use tts=\"auto\"."
        )
    if tts in ("auto", "elevenlabs") and elevenlabs_key.has_value:
        agent.with_environment("ELEVENLABS_API_KEY", elevenlabs_key)
        agent.with_environment("TTS_ELEVENLABS_API_KEY", elevenlabs_key)
    elif tts in ("espeak-ng", "tone"):
        agent.with_environment("TTS_LOCAL_SYNTHESIZER", tts)

    agent.with_environment("LOGGING_LEVEL", "INFO")
    agent.with_environment("LOGGING_FORMAT", "json")


def _management_environment(manager: Resource, server: PostgresServer, password: Any, agent: Resource,
                            api_key: Any) -> None:
    manager.with_environment("SERVER_HOST", "127.0.0.1")
    manager.with_environment("SERVER_PORT", manager.endpoint("http").port)
    _database_environment(manager, server, password, "management")
    manager.with_environment("DB_SSL_MODE", "disable")
    manager.with_environment("HOMUNCULY_BASE_URL", agent.endpoint("http").url)
    manager.with_environment("HOMUNCULY_API_KEY", api_key)


# -- real checkout ----------------------------------------------------------------------------------


class _Checkout:
    """Paths of a Homunculy checkout: its agent project, changelogs and management service."""

    def __init__(self, root: Path, python: str) -> None:
        self.root = root
        self.agent_project = root / "homunculy"
        self.agent_src = self.agent_project / "src"
        if not (self.agent_src / "main.py").is_file():
            raise ConfigurationError(
                f"source={str(root)!r} is not a Homunculy checkout: {self.agent_src / 'main.py'} is missing. "
                "Pass the repository's root, the folder that holds homunculy/, homunculy-db/ and "
                "management-service-db/."
            )
        self.python = python

    def changelog(self, folder: str) -> Path:
        """Return the master changelog in `<folder>/changelog`, or the folder itself for plain .sql files."""
        directory = self.root / folder / "changelog"
        if not directory.is_dir():
            raise ConfigurationError(f"The checkout has no {directory}; its changelogs are expected there.")
        masters = sorted(directory.glob("*.xml"), key=lambda path: ("master" not in path.name, path.name))
        return masters[0] if masters else directory

    def add_agent(self, stack: Stack, port: int | None, instrument: bool) -> Resource:
        """Declare the agent app plus the two set-up resources that build its virtual environment."""
        python = shutil.which(self.python)
        if python is None:
            raise ConfigurationError(
                f"The agent service needs {self.python!r} to build its virtual environment, and it is not on "
                "PATH. Install Python 3.12 (e.g. `apt-get install python3.12-venv` or pyenv), or pass "
                "python= with an interpreter path."
            )
        venv = stack.state_dir / "venvs" / "homunculy-app"
        setup_env = {"PYTHONPATH": str(PACKAGE_ROOT)}

        create = stack.add_python_app("homunculy-app-venv", "homunculy_nb.stacks",
                                      args=["create-venv", str(venv), "--python", python])
        packages = [arg for package in agent_telemetry_packages() for arg in ("--package", package)] if instrument else []
        install = stack.add_python_app("homunculy-app-install", "homunculy_nb.stacks",
                                       args=["install", str(venv), str(self.agent_project), *packages])
        install.wait_for_completion(create)
        for resource in (create, install):
            for key, value in setup_env.items():
                resource.with_environment(key, value)

        # The venv does not exist before its set-up resources run, so the app starts through a launcher
        # that replaces itself (same pid) with the venv's program.
        program = ["opentelemetry-instrument", "python"] if instrument else ["python"]
        agent = stack.add_python_app("homunculy-app", "homunculy_nb.stacks", cwd=self.agent_src)
        agent.with_http_endpoint(port=port)
        agent.with_args("exec", str(venv), *program, "-m", "uvicorn", "main:app", "--host", "127.0.0.1",
                        "--port", agent.endpoint("http").port)
        agent.with_environment("PYTHONPATH", str(PACKAGE_ROOT))
        # Token counting downloads a tiktoken encoding on the first chat; a cache in the state directory
        # keeps it across runs. NOTE: the very first chat still needs network access to fill it.
        agent.with_environment("TIKTOKEN_CACHE_DIR", str(stack.state_dir / "tiktoken-cache"))
        if instrument:
            agent.with_environment("OTEL_LOGS_EXPORTER", "otlp")
            agent.with_environment("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "true")
        agent.wait_for_completion(install)
        return agent

    def add_management(self, stack: Stack, port: int | None) -> Resource:
        """Declare the Go management service, run with `go run`."""
        project = self.root / "management-service"
        go = shutil.which("go")
        if go is None:
            raise ConfigurationError(
                "The checkout's management service is written in Go, and `go` is not on PATH. Install Go "
                "(`apt-get install golang-go`), or pass management=\"reference\" to run the reference "
                "management service instead."
            )
        mains = sorted(project.glob("cmd/*/main.go"))
        target = f"./{mains[0].parent.relative_to(project)}" if mains else "."
        manager = stack.add_executable("management-app", go, args=["run", target], cwd=project)
        return manager.with_http_endpoint(port=port)


# -- set-up commands run by the checkout's resources ------------------------------------------------


def _run(command: list[str], env: dict[str, str] | None = None) -> None:
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env={**os.environ, **(env or {})})


def create_venv(venv: Path, python: str) -> None:
    """Create the virtual environment unless it exists."""
    if (venv / "bin" / "python").exists():
        print(f"Virtual environment {venv} exists", flush=True)
        return
    venv.parent.mkdir(parents=True, exist_ok=True)
    _run([python, "-m", "venv", str(venv)])


def _install_fingerprint(project: Path, packages: list[str]) -> str:
    digest = hashlib.sha256()
    for name in ("poetry.lock", "pyproject.toml", "requirements.txt"):
        path = project / name
        if path.exists():
            digest.update(name.encode() + path.read_bytes())
    digest.update("\n".join(packages).encode())
    return digest.hexdigest()


def install(venv: Path, project: Path, packages: list[str]) -> None:
    """Install the project's dependencies into `venv` unless the same files were installed before.

    Uses requirements.txt when present, else Poetry with poetry.lock (main and, when declared, db
    groups), else the `[project] dependencies` of pyproject.toml.
    """
    stamp = venv / INSTALL_STAMP
    fingerprint = _install_fingerprint(project, packages)
    if stamp.exists() and stamp.read_text() == fingerprint:
        print(f"Dependencies of {project} are installed and unchanged", flush=True)
        return

    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    pyproject = tomllib.loads((project / "pyproject.toml").read_text()) if (project / "pyproject.toml").exists() else {}
    if (project / "requirements.txt").exists():
        _run([*pip, "-r", str(project / "requirements.txt")])
    elif (project / "poetry.lock").exists():
        _run([*pip, "poetry"])
        groups = ["main"] + (["db"] if "db" in pyproject.get("tool", {}).get("poetry", {}).get("group", {}) else [])
        _run([str(venv / "bin" / "poetry"), "install", "--no-root", "--only", ",".join(groups)],
             env={"VIRTUAL_ENV": str(venv), "POETRY_VIRTUALENVS_CREATE": "false"})
    elif pyproject.get("project", {}).get("dependencies"):
        _run([*pip, *pyproject["project"]["dependencies"]])
    else:
        raise SystemExit(f"{project} has no requirements.txt, poetry.lock or [project] dependencies to install.")

    if packages:
        _run([*pip, *packages])
    stamp.write_text(fingerprint)


def exec_in_venv(venv: Path, program: str, args: list[str]) -> None:
    """Replace this process with `program` from the venv's bin folder, with the venv activated."""
    executable = venv / "bin" / program
    if not executable.exists():
        raise SystemExit(f"{executable} does not exist. Run the install step first, or check the venv path.")
    os.environ["VIRTUAL_ENV"] = str(venv)
    os.environ["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    # The venv's interpreter must not import this process's packages in place of its own.
    os.environ.pop("PYTHONPATH", None)
    sys.stdout.flush()
    os.execv(executable, [str(executable), *args])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m homunculy_nb.stacks",
                                     description="Set-up steps of a Homunculy checkout's agent service.")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create-venv", help="create a virtual environment unless it exists")
    create.add_argument("venv", type=Path)
    create.add_argument("--python", default=sys.executable, help="interpreter to create it with")
    setup = commands.add_parser("install", help="install a project's dependencies into a virtual environment")
    setup.add_argument("venv", type=Path)
    setup.add_argument("project", type=Path)
    setup.add_argument("--package", action="append", default=[], help="an extra package to install")
    run = commands.add_parser("exec", help="run a program from a virtual environment, replacing this process")
    run.add_argument("venv", type=Path)
    run.add_argument("program")
    run.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.command == "create-venv":
            create_venv(args.venv, args.python)
        elif args.command == "exec":
            exec_in_venv(args.venv, args.program, args.args)
        else:
            install(args.venv, args.project, args.package)
    except subprocess.CalledProcessError as exc:
        print(f"Command failed with exit code {exc.returncode}: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
