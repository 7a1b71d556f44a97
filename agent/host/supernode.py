"""`flower-supernode`, pulling for messages every PULL_INTERVAL_S instead of every 3 s, and for
their objects without Flower's 1-10 s backoff (common/flower_backoff.py).

Flower 1.42's SuperNode sleeps a fixed 3 s whenever a pull finds no message
(flwr/supernode/start_client_internal.py, not configurable), so every message of a study waits
1.5 s on average, up to 3 s, before the site sees it: a SecAgg+ round is four messages, so about
6 s of a round are this wait alone. This runs the same entry point with that one module's `time`
replaced by one whose sleep is capped (its other sleeps are 0.5 s and stay). A pull is one small
request to the SuperLink; at 0.5 s, 100 sites make 200 a second.

The agent starts the SuperNode as `python -m synthpool.agent.host.supernode ARGS`
(agent/host/daemon.py), with flower-supernode's own arguments.
"""

from __future__ import annotations

import sys
import time

PULL_INTERVAL_S = 0.5


class _CappedSleep:
    """The `time` module, but `sleep` waits at most PULL_INTERVAL_S."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, PULL_INTERVAL_S))


def patch_pull_interval() -> None:
    from flwr.supernode import start_client_internal

    # Fails loudly if a Flower upgrade moves the loop: better than a silent 3 s again.
    if getattr(start_client_internal, "time", None) is not time:
        raise RuntimeError("flwr.supernode.start_client_internal no longer uses `time`: "
                           "re-check agent/host/supernode.py against the installed Flower")
    start_client_internal.time = _CappedSleep()


def main() -> int:
    from ...common import flower_backoff

    patch_pull_interval()
    flower_backoff.shorten()  # a message's objects pulled from the SuperLink without 1-8 s waits
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    return flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
