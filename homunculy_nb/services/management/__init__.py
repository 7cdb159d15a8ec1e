"""The reference management service (management-app): users, quotas, agents, chat forwarding.

`app` is built from the environment on first access, so importing the package has no side effects.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "create_app"]

_app: Any = None


def create_app() -> Any:
    """Build a new app from the current environment."""
    from homunculy_nb.services.management.server import create_app as build

    return build()


def __getattr__(name: str) -> Any:
    global _app

    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
