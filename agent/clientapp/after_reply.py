"""Work a task does after it has answered its message and handed its task back to the SuperNode.

Why: a SuperNode handles one message at a time, so in a SecAgg+ round a site's DP-SGD job (the
"collect masked vectors" stage) could only start after two key stages of about a second each.
The coordinator sends the round's request with the first of them (coordinator/serverapp/
secure_aggregation.py); the site answers the key stage at once and then, in the same process,
trains (agent/clientapp/app.py, `train_ahead`). The job's output stays in the site's release
cache (agent/site_state.py); the masking stage takes it from there, waiting on the job's lock
while it still runs.

Only agent/host/trusted_app.py runs deferred work (it `enable`s it for its one task, and runs it
after the task output is pushed, so the SuperNode is free for the next message). Anywhere else
(the simulation's workers, tests calling the ClientApp) nothing is deferred: the masking stage
trains itself, as it always could.
"""

from __future__ import annotations

import logging
from typing import Callable

log = logging.getLogger("synthpool.agent")

_pending: list[Callable[[], None]] | None = None  # None: this process runs no deferred work


def enable() -> None:
    global _pending
    _pending = []


def defer(work: Callable[[], None]) -> None:
    """Run `work` once this task has answered; dropped where nobody runs deferred work."""
    if _pending is not None:
        _pending.append(work)


def run_pending() -> None:
    """Run what was deferred, in order; a failure is logged (the site's log) and the next runs."""
    global _pending
    work, _pending = list(_pending or []), None
    for job in work:
        try:
            job()
        except Exception:  # noqa: BLE001 - the masking stage redoes the job and reports it
            log.exception("work deferred after the reply failed")
