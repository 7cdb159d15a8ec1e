"""Fixtures for the orchestrator's integration tests: real processes, real PostgreSQL, private paths."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from homunculy_nb.stack import Stack

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


@pytest.fixture(autouse=True)
def private_paths(tmp_path, monkeypatch):
    """Keep the secrets file and the CLI's last-stack pointer out of the real home directory."""
    monkeypatch.setenv("HOMUNCULY_NB_SECRETS_FILE", str(tmp_path / "config" / "secrets.json"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


@pytest.fixture
def state_root():
    """Return a fresh directory directly under the system temporary directory, removed after the test.

    Not under pytest's base directory: pytest resets that directory's group bits when a session starts,
    which also clears the ACL that lets a PostgreSQL server run as another OS user (as root) reach its
    data directory below it.
    """
    root = Path(tempfile.mkdtemp(prefix="hnb-core-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_stack(tmp_path, state_root):
    """Return a factory of stacks with private state directories, all brought down after the test."""
    stacks: list[Stack] = []

    def factory(name: str = "itest", **kwargs) -> Stack:
        kwargs.setdefault("state_dir", state_root / f"state-{name}-{len(stacks)}")
        kwargs.setdefault("source_dir", tmp_path)
        stack = Stack(name, **kwargs)
        stacks.append(stack)
        return stack

    yield factory

    for stack in stacks:
        if stack._orchestrator is not None:
            stack.down(volumes=True)
