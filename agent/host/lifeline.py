"""Children of the agent die with their parent: a site never keeps accepting or running work
without the agent that configured it, even when the agent is SIGKILLed."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass
