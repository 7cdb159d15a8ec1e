"""The package's public surface: the pinned names, each importable, and a cheap import."""

from __future__ import annotations

import subprocess
import sys

import homunculy_nb

EXPECTED_NAMES = [
    "ChatClient", "Collector", "CollectorLimits", "Parameter", "ResourceState", "Secret", "Stack",
    "Turn", "errors", "homunculy_stack", "open_run", "run_sessions", "summarize", "views",
]


def test_all_lists_pinned_names():
    assert homunculy_nb.__all__ == sorted(EXPECTED_NAMES)


def test_every_public_name_resolves():
    for name in homunculy_nb.__all__:
        assert getattr(homunculy_nb, name) is not None, name


def test_unknown_name_raises_attribute_error():
    try:
        homunculy_nb.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("homunculy_nb.NoSuchThing did not raise AttributeError")


def test_import_loads_no_heavy_module():
    code = "import sys, homunculy_nb; print(sorted(m for m in ('pandas', 'grpc', 'plotly') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
