"""An auditor's recomputation of a stated epsilon, from a manifest's or ledger's own fields, with
dp-accounting's public PLDAccountant API (not synthpool's code path through its low-level PLDs)."""

from __future__ import annotations

from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from opacus.accountants import RDPAccountant


def _event(m: dict) -> dp_event.DpEvent:
    gaussian = dp_event.GaussianDpEvent(m["noise_multiplier"])
    if m["sample_rate"] < 1:
        gaussian = dp_event.PoissonSampledDpEvent(m["sample_rate"], gaussian)
    return dp_event.SelfComposedDpEvent(gaussian, m["steps"])


def recompute_epsilon(privacy: dict) -> float:
    """epsilon at the stated delta: the Gaussian mechanisms composed by PLD with the stated
    settings, plus the pure spends (basic composition, each taking its share of delta)."""
    assert privacy["accountant"] == "dp_accounting.pld.PLDAccountant"
    settings = privacy["accountant_settings"]
    assert settings["neighboring_relation"] == "ADD_OR_REMOVE_ONE"
    pure = privacy.get("pure_spends", [])
    delta = privacy["delta"] - sum(p["delta"] for p in pure)
    mechanisms = [m for m in privacy["mechanisms"] if m["steps"] > 0]
    eps = 0.0
    if mechanisms:
        acc = PLDAccountant(value_discretization_interval=settings["value_discretization_interval"])
        acc.compose(dp_event.ComposedDpEvent([_event(m) for m in mechanisms]))
        eps = acc.get_epsilon(delta)
    return eps + sum(p["epsilon"] for p in pure)


def rdp_epsilon(mechanisms: list[dict], delta: float) -> float:
    """Opacus' RDP bound for the same mechanisms: looser, so never below the PLD's."""
    acc = RDPAccountant()
    acc.history = [(m["noise_multiplier"], m["sample_rate"], m["steps"]) for m in mechanisms
                   if m["steps"] > 0]
    return acc.get_epsilon(delta=delta)
