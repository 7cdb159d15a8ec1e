"""Fixtures for the app model's unit tests: a private secrets file and state directory per test."""

from __future__ import annotations

import pytest

from homunculy_nb.stack import Stack


@pytest.fixture(autouse=True)
def secrets_path(tmp_path, monkeypatch):
    """Point the user secrets file at a temporary path so no test touches the real home."""
    path = tmp_path / "config" / "secrets.json"
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(path))
    return path


@pytest.fixture
def stack(tmp_path):
    return Stack("unit", state_dir=tmp_path / "state", source_dir=tmp_path)
