"""`flower-supernode`, pulling for messages soon after the last one instead of every 3 s, and
for their objects without Flower's 1-10 s backoff (common/flower_backoff.py).

Flower 1.42's SuperNode sleeps a fixed 3 s whenever a pull finds no message, and 0.5 s between
looks at its own task's reply (flwr/supernode/start_client_internal.py, neither configurable):
every message of a study waits 1.5 s on average before the site sees it, and its reply up to
0.5 s before it leaves. A SecAgg+ round is four messages, three of them a fraction of a second of
work. This runs the same entry point with that one module's `time` replaced by `_Pacing`:
- the waits while a message is handled (its reply, its objects: in-process, no network) are
  LOCAL_WAIT_S;
- for ACTIVE_S after a message the site pulls every FIRST_PULL_S, then the wait doubles with
  every empty pull up to IDLE_PULL_S. A study's next message usually follows within two seconds
  (the other sites' replies to the same stage, the coordinator's aggregation), so it is seen
  within about 0.1 s (measured: with doubling from the first empty pull, a median 0.27 s and up
  to 0.8 s late); an idle site pulls once a second, and a study of 100 sites costs the SuperLink
  about 1,000 pulls a second for two seconds after a stage, 100 a second after that.

It also declares a heartbeat interval of HEARTBEAT_S instead of Flower's 30 s: the SuperLink
marks a node offline after twice the interval without a heartbeat and then answers the node's
pending messages with an error, so a site killed mid-round is dropped after about 20 s instead of
a minute (the round's survivors wait that long). A heartbeat is one small request every ~4 s.

The agent starts the SuperNode as `python -m synthpool.agent.host.supernode ARGS`
(agent/host/daemon.py), with flower-supernode's own arguments.
"""

from __future__ import annotations

import sys
import time

FLOWER_EMPTY_PULL_S = 3.0  # the one sleep of the module that follows an empty pull
LOCAL_WAIT_S = 0.05
FIRST_PULL_S = 0.1
ACTIVE_S = 2.0
IDLE_PULL_S = 1.0
HEARTBEAT_S = 10.0  # flwr.common.constant.HEARTBEAT_MIN_INTERVAL: the least the SuperLink takes


class _Pacing:
    """The `time` module, with the sleeps of the SuperNode's loop paced as above."""

    def __init__(self) -> None:
        self.next_pull = FIRST_PULL_S
        self.last_message = float("-inf")

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds < FLOWER_EMPTY_PULL_S:  # handling a message: the next pull comes soon
            self.next_pull, self.last_message = FIRST_PULL_S, time.monotonic()
            time.sleep(min(seconds, LOCAL_WAIT_S))
        elif time.monotonic() - self.last_message < ACTIVE_S:
            time.sleep(FIRST_PULL_S)
        else:
            wait, self.next_pull = self.next_pull, min(2 * self.next_pull, IDLE_PULL_S)
            time.sleep(wait)


def patch_pull_interval() -> None:
    from flwr.supernode import start_client_internal

    # Fails loudly if a Flower upgrade moves the loop: better than a silent 3 s again.
    if getattr(start_client_internal, "time", None) is not time:
        raise RuntimeError("flwr.supernode.start_client_internal no longer uses `time`: "
                           "re-check agent/host/supernode.py against the installed Flower")
    start_client_internal.time = _Pacing()


def shorten_heartbeat() -> None:
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    # Both read Flower's constant at call time: the interval the SuperLink is told, and the
    # sender's period ((interval - call timeout) x 0.7-0.9).
    for module in (heartbeat, fleet_http_connection):
        if not hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
            raise RuntimeError(f"{module.__name__} no longer reads HEARTBEAT_DEFAULT_INTERVAL: "
                               "re-check agent/host/supernode.py against the installed Flower")
        module.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_S


def main() -> int:
    from ...common import flower_backoff

    patch_pull_interval()
    shorten_heartbeat()
    flower_backoff.shorten()  # a message's objects pulled from the SuperLink without 1-8 s waits
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    return flower_supernode()


if __name__ == "__main__":
    sys.exit(main())
