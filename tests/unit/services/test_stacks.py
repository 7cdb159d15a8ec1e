"""The declared Homunculy topology, checked without launching anything."""

from __future__ import annotations

import pytest

from homunculy_nb.errors import ConfigurationError
from homunculy_nb.stacks import agent_telemetry_packages, homunculy_stack



@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    # Parameters are also read from the user's secrets file; keep it inside the test directory.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    for variable in ("PARAMETERS__OPENAI_API_KEY", "PARAMETERS__ELEVENLABS_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path / "state"


def names(stack):
    return list(stack.resources)


def test_default_ports_and_order(state_dir):
    stack = homunculy_stack(state_dir=state_dir)

    assert names(stack) == ["homunculy-postgres", "homunculy", "homunculy-migrations", "management-postgres",
                            "management", "management-migrations", "llm", "homunculy-app", "management-app"]
    ports = {name: resource.endpoints[next(iter(resource.endpoints))].port
             for name, resource in stack.resources.items() if resource.endpoints}
    assert ports == {"homunculy-postgres": 5433, "management-postgres": 5434, "llm": None,
                     "homunculy-app": 8000, "management-app": 8080}


def test_auto_ports_are_free(state_dir):
    stack = homunculy_stack(ports="auto", state_dir=state_dir)

    assert all(endpoint.port is None for resource in stack.resources.values()
               for endpoint in resource.endpoints.values())


def test_waits_follow_topology(state_dir):
    stack = homunculy_stack(ports="auto", state_dir=state_dir)
    waits = {name: [(wait.resource.name, wait.condition) for wait in resource.waits]
             for name, resource in stack.resources.items()}

    assert ("homunculy-migrations", "completed") in waits["homunculy-app"]
    assert ("llm", "healthy") in waits["homunculy-app"]
    assert ("management-migrations", "completed") in waits["management-app"]
    assert ("homunculy-app", "healthy") in waits["management-app"]


def test_agent_environment_names(state_dir):
    agent = homunculy_stack(ports="auto", state_dir=state_dir).resources["homunculy-app"]

    for variable in ("APP_HOST", "APP_PORT", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASSWORD",
                     "LLM_PROVIDER", "LLM_OPENAI_API_KEY", "LLM_OPENAI_BASE_URL", "OPENAI_BASE_URL",
                     "LLM_DEFAULT_MODEL", "TTS_PROVIDER", "LOGGING_LEVEL", "LOGGING_FORMAT",
                     "OTEL_EXPORTER_OTLP_ENDPOINT"):
        assert variable in agent.environment, variable
    assert agent.environment["DB_NAME"] == "homunculy"


def test_management_environment_names(state_dir):
    manager = homunculy_stack(ports="auto", state_dir=state_dir).resources["management-app"]

    for variable in ("SERVER_HOST", "SERVER_PORT", "DB_HOST", "DB_SSL_MODE", "HOMUNCULY_BASE_URL",
                     "HOMUNCULY_API_KEY"):
        assert variable in manager.environment, variable
    assert manager.environment["DB_NAME"] == "management"


def test_openai_key_skips_local_llm(state_dir, monkeypatch):
    monkeypatch.setenv("PARAMETERS__OPENAI_API_KEY", "sk-test")
    stack = homunculy_stack(ports="auto", state_dir=state_dir)

    assert "llm" not in stack.resources
    assert stack.resources["homunculy-app"].environment["LLM_OPENAI_BASE_URL"] == "https://api.openai.com/v1"


def test_llm_url_used_as_base(state_dir):
    stack = homunculy_stack(llm="http://127.0.0.1:9/v1", ports="auto", state_dir=state_dir)

    assert "llm" not in stack.resources
    assert stack.resources["homunculy-app"].environment["OPENAI_BASE_URL"] == "http://127.0.0.1:9/v1"


def test_elevenlabs_without_key_rejected(state_dir):
    with pytest.raises(ConfigurationError, match="elevenlabs-api-key"):
        homunculy_stack(tts="elevenlabs", ports="auto", state_dir=state_dir)


def test_local_synthesizer_choice(state_dir):
    agent = homunculy_stack(tts="tone", ports="auto", state_dir=state_dir).resources["homunculy-app"]

    assert agent.environment["TTS_LOCAL_SYNTHESIZER"] == "tone"
    assert "ELEVENLABS_API_KEY" not in agent.environment


@pytest.mark.parametrize("options, word", [
    ({"ports": "fixed"}, "ports"),
    ({"llm": "ollama"}, "llm"),
    ({"tts": "loud"}, "tts"),
    ({"management": "java"}, "management"),
    ({"management": "go"}, "source="),
])
def test_invalid_options_rejected(state_dir, options, word):
    with pytest.raises(ConfigurationError, match=word):
        homunculy_stack(state_dir=state_dir, **options)


def test_telemetry_packages_pinned():
    packages = agent_telemetry_packages()

    assert all("==" in package for package in packages)
    assert any(package.startswith("opentelemetry-instrumentation-fastapi==") for package in packages)
