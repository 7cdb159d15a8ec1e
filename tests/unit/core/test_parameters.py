"""Parameter sources, generation, the secrets file and masking."""

from __future__ import annotations

import json
import os
import stat

import pytest

from homunculy_nb.errors import ParameterError
from homunculy_nb.parameters import (
    Secret,
    list_secrets,
    parameter_env_var,
    read_env_file,
    remove_secret,
    set_secret,
)


def test_secret_masks_repr_str_and_format():
    secret = Secret("hunter2")

    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "hunter2" not in f"{[secret]}"
    assert secret.reveal() == "hunter2"


def test_secret_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("hunter2"))


def test_env_var_name_uppercases_and_replaces_dashes():
    assert parameter_env_var("homunculy-db-password") == "PARAMETERS__HOMUNCULY_DB_PASSWORD"


def test_code_value_wins_over_environment(stack, monkeypatch):
    monkeypatch.setenv("PARAMETERS__MODEL", "from-env")
    parameter = stack.add_parameter("model", value="from-code")

    assert parameter.value == "from-code"
    assert parameter.source == "code"


def test_environment_wins_over_secrets_file(stack, monkeypatch):
    set_secret("unit", "db-password", "from-file")
    monkeypatch.setenv("PARAMETERS__DB_PASSWORD", "from-env")
    parameter = stack.add_parameter("db-password", secret=True)

    assert parameter.value.reveal() == "from-env"
    assert parameter.source == "environment"


def test_secrets_file_wins_over_dotenv(stack, tmp_path):
    (tmp_path / ".env").write_text("PARAMETERS__API_KEY=from-dotenv\n")
    set_secret("unit", "api-key", "from-file")
    parameter = stack.add_parameter("api-key", secret=True)

    assert parameter.value.reveal() == "from-file"


def test_dotenv_accepts_both_key_forms(stack, tmp_path):
    (tmp_path / ".env").write_text("# settings\nexport REGION='eu-west'\nPARAMETERS__ZONE=\"b\"\n")

    assert stack.add_parameter("region").value == "eu-west"
    assert stack.add_parameter("zone").value == "b"
    assert stack.parameters["zone"].source == ".env"


def test_dotenv_wins_over_default(stack, tmp_path):
    (tmp_path / ".env").write_text("LEVEL=debug\n")
    parameter = stack.add_parameter("level", default="info")

    assert parameter.value == "debug"


def test_default_used_last(stack):
    parameter = stack.add_parameter("level", default="info")

    assert parameter.value == "info"
    assert parameter.source == "default"


def test_secret_parameter_value_is_masked(stack):
    parameter = stack.add_parameter("token", secret=True, value="s3cr3t")

    assert isinstance(parameter.value, Secret)
    assert "s3cr3t" not in repr(parameter)
    assert "s3cr3t" not in repr(parameter.value)


def test_generated_password_is_persisted(stack, secrets_path):
    parameter = stack.add_parameter("db-password", secret=True, generate=True)

    first = parameter.value.reveal()
    second = parameter.value.reveal()

    assert len(first) >= 20
    assert first.isalnum()
    assert second == first
    assert json.loads(secrets_path.read_text())["unit"]["db-password"] == first


def test_secrets_file_is_private(secrets_path):
    set_secret("unit", "x", "y")

    mode = stat.S_IMODE(os.stat(secrets_path).st_mode)
    assert mode == 0o600


def test_missing_parameter_names_the_fix(stack):
    parameter = stack.add_parameter("openai-api-key", secret=True)

    with pytest.raises(ParameterError) as raised:
        parameter.value

    message = str(raised.value)
    assert "`openai-api-key`" in message
    assert "homunculy-nb secrets set unit openai-api-key VALUE" in message
    assert "PARAMETERS__OPENAI_API_KEY" in message


def test_generate_requires_secret(stack):
    with pytest.raises(ParameterError, match="secret=True"):
        stack.add_parameter("x", generate=True)


def test_invalid_parameter_name_rejected(stack):
    with pytest.raises(ParameterError, match="Invalid parameter name"):
        stack.add_parameter("bad name")


def test_list_and_remove_secrets():
    set_secret("a", "one", "1")
    set_secret("a", "two", "2")
    set_secret("b", "three", "3")

    assert list_secrets() == {"a": ["one", "two"], "b": ["three"]}
    assert list_secrets("a") == {"a": ["one", "two"]}
    assert remove_secret("a", "one") is True
    assert remove_secret("a", "one") is False
    assert list_secrets("a") == {"a": ["two"]}


def test_corrupt_secrets_file_reported(secrets_path):
    secrets_path.parent.mkdir(parents=True)
    secrets_path.write_text("{not json")

    with pytest.raises(Exception, match="not valid JSON"):
        list_secrets()


def test_read_env_file_missing_is_empty(tmp_path):
    assert read_env_file(tmp_path / "none.env") == {}
