"""Fixtures for the QA regression tests: private secrets file and state directories, stacks brought down."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from homunculy_nb.stack import Stack


@pytest.fixture(autouse=True)
def private_paths(tmp_path, monkeypatch):
    """Keep the secrets file and the CLI's last-stack pointer out of the real home directory."""
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(tmp_path / "config" / "secrets.json"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def make_stack(tmp_path):
    """Return a factory of stacks with private state directories, all brought down after the test."""
    root = Path(tempfile.mkdtemp(prefix="hnb-qa-"))
    os.chmod(root, 0o755)
    stacks: list[Stack] = []

    def factory(name: str = "qa", **kwargs) -> Stack:
        kwargs.setdefault("state_dir", root / f"state-{name}-{len(stacks)}")
        kwargs.setdefault("source_dir", tmp_path)
        stack = Stack(name, **kwargs)
        stacks.append(stack)
        return stack

    yield factory

    for stack in stacks:
        if stack._orchestrator is not None:
            stack.down(volumes=True)
    shutil.rmtree(root, ignore_errors=True)
