"""Flower's wait before it retries pulling a message's parts: 50 ms, doubling to 0.5 s, not
1 s doubling to 10 s.

In Flower 1.42 a message travels as a tree of objects (its arrays in chunks). Whoever receives
one (a SuperNode from the SuperLink, a site's task from its SuperNode, the ServerApp's grid from
the SuperLink) learns of the message first and pulls its objects after; an object not there yet
is retried after 1 s, then 2, 4, 8 and 10 s. The sender is usually milliseconds behind, but one
miss costs a second and two cost three: measured in the demo, a site's training task waited
7-15 s for the round's weights before it could start, every round (flwr/supercore/inflatable/
inflatable_utils.py; a default argument, not a setting). `shorten()` changes those defaults in
the calling process; every process of ours that receives messages calls it at start. The total
wait allowed is unchanged (Flower's PULL_MAX_TIME, 2 hours): only the retries come sooner.
"""

from __future__ import annotations

INITIAL_BACKOFF_S = 0.05
BACKOFF_CAP_S = 0.5


def shorten() -> None:
    from flwr.supercore.inflatable import inflatable_utils

    for f in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree):
        defaults = f.__kwdefaults__
        if not defaults or not {"initial_backoff", "backoff_cap",
                                "max_tries_per_object"} <= defaults.keys():
            raise RuntimeError(f"flwr's {f.__name__} no longer takes its backoff as keyword "
                               "defaults: re-check common/flower_backoff.py against it")
        # Retries bounded by the total time only, as 500 tries at up to 10 s were before.
        defaults.update(initial_backoff=INITIAL_BACKOFF_S, backoff_cap=BACKOFF_CAP_S,
                        max_tries_per_object=None)
