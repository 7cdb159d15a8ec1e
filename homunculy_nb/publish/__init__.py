"""Publish a stack as deployable files: a Docker Compose project or Kubernetes manifests.

Neither writer ever writes a secret value. Parameters become deploy-time variables (`.env.example` for
Compose, a Secret template for Kubernetes) listed without values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from homunculy_nb.errors import ConfigurationError

logger = logging.getLogger(__name__)

TARGETS = ("compose", "kubernetes")


def publish(stack: Any, target: str, out_dir: str | os.PathLike) -> list[Path]:
    """Write `stack` for `target` ("compose" or "kubernetes") into `out_dir`; return the files written."""
    if target not in TARGETS:
        raise ConfigurationError(f"Invalid publish target {target!r}: use \"compose\" or \"kubernetes\".")

    from homunculy_nb.publish._plan import make_plan

    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(stack, out)

    if target == "compose":
        from homunculy_nb.publish import compose

        written = compose.write(plan, out)
    else:
        from homunculy_nb.publish import kubernetes

        written = kubernetes.write(plan, out)

    for service in plan.services.values():
        for note in service.notes:
            logger.warning("%s", note)
    logger.info("Published stack `%s` for %s: %d files in %s", stack.name, target, len(written), out)
    return written


__all__ = ["TARGETS", "publish"]
