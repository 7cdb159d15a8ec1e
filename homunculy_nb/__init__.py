"""homunculy-nb: declare, launch and observe the Homunculy microservices from JupyterLab.

Names load on first use (PEP 562), so `python -m homunculy_nb.migrations`, which runs on every stack's
startup path, does not pay for pandas, grpc or plotly.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# The package forks PostgreSQL servers and apps from a process that may run gRPC threads (the
# collector, the chat client's exporter). With gRPC's fork handlers on, a forked child can restart
# gRPC's poller between fork and exec and abort (SIGABRT, "epoll_wait error: Bad file descriptor").
# Children exec at once and never use the parent's gRPC, so the handlers stay off unless the user
# set the variable. gRPC reads it when first imported, so it is set here, before any grpc import.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

_PUBLIC_NAMES = {
    "Stack": "homunculy_nb.stack",
    "Parameter": "homunculy_nb.parameters",
    "Secret": "homunculy_nb.parameters",
    "ResourceState": "homunculy_nb.orchestrator",
    "Collector": "homunculy_nb.collector",
    "CollectorLimits": "homunculy_nb.collector",
    "open_run": "homunculy_nb.run",
    "ChatClient": "homunculy_nb.chat",
    "Turn": "homunculy_nb.chat",
    "run_sessions": "homunculy_nb.chat",
    "summarize": "homunculy_nb.chat",
    "homunculy_stack": "homunculy_nb.stacks",
}
_PUBLIC_MODULES = ("errors", "views")

__all__ = sorted([*_PUBLIC_NAMES, *_PUBLIC_MODULES])


def __getattr__(name: str) -> Any:
    if name in _PUBLIC_NAMES:
        value = getattr(importlib.import_module(_PUBLIC_NAMES[name]), name)
    elif name in _PUBLIC_MODULES:
        value = importlib.import_module(f"homunculy_nb.{name}")
    else:
        raise AttributeError(f"module 'homunculy_nb' has no attribute {name!r}")

    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
