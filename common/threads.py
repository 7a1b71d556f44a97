"""How many threads a process may use: the cores it may run on, not the machine's."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or `taskset` limits it),
    else every core of the machine where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
