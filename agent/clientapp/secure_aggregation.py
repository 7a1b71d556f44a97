"""The site's side of a SecAgg+ round (coordinator/serverapp/secure_aggregation.py has the protocol).

Flower's `secaggplus_mod` runs the key agreement, and in its "collect masked vectors" stage it
calls our `train` handler, then weights, quantizes and masks what the handler returned. Two things
here make it fit our ClientApp:

* `secure_aggregation_mod` applies Flower's mod only to messages that carry SecAgg+ configs; a
  plain round's `train` message passes straight through (Flower's mod on its own raises KeyError
  on it), so one installed ClientApp serves both kinds of study;
* a refusal (budget, schema) stays a refusal: Flower's mod would try to read model weights out of
  our error reply and crash, so the coordinator would only see "clientapp-exception". The error
  reply is passed back as it is, with the site's reason.

What the handler returns in a secure round is the update as a displacement from the global weights
(`update_of`), checked at the site before it is masked, because once masked nobody can check it.
"""

from __future__ import annotations

import numpy as np

from ...common.update_bound import displacement_problem
from ...common.wire import SECAGG_CONFIGS


class _Declined(Exception):
    def __init__(self, reply) -> None:
        super().__init__("the site declined the round")
        self.reply = reply


def secure_aggregation_mod(msg, ctxt, call_next):
    from flwr.app import Message
    from flwr.client.mod import secaggplus_mod

    if SECAGG_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)

    def train_or_decline(inner, inner_ctxt):
        reply = call_next(inner, inner_ctxt)
        if reply.has_error():
            raise _Declined(reply)
        return reply

    try:
        return secaggplus_mod(msg, ctxt, train_or_decline)
    except _Declined as declined:
        return Message(declined.reply.error, reply_to=msg)


def update_of(global_weights: list[np.ndarray], weights: list[np.ndarray],
              max_update: float) -> list[np.ndarray]:
    """The displacement this site contributes, checked as the coordinator checks a plain update
    (coordinator/serverapp/strategy.py), since here the coordinator cannot."""
    if [w.shape for w in weights] != [g.shape for g in global_weights]:
        raise ValueError("the trained model's shapes differ from the global model's")
    update = [np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64)
              for w, g in zip(weights, global_weights)]
    if not all(np.all(np.isfinite(u)) for u in update):
        raise ValueError("the update holds NaN or infinite values")
    problem = displacement_problem(weights, global_weights, max_update)
    if problem:
        raise ValueError(problem)
    return update
