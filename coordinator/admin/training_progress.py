"""The ServerApp's event log, retold as the admin API's progress events.

Why a translation and not the raw log: the ServerApp (coordinator/serverapp/) writes what an
auditor needs (every stage, every site's refusal with its reason) into the checkpoint dir's
`events.jsonl`; an administrator watching `synthpool train watch` needs the admin API's few kinds
(supervisor.RunEvent: started | round | message | finished | failed | stopped). Every log entry
becomes one event, so nothing the coordinator knows is hidden from the watcher:

* `round_completed` -> `round`, with progress (round / rounds), the sites used and dropped, and
  the epsilon the sites' ledgers reported after that round (read from the round's checkpoint);
* everything else (statistics stage, round started, a site refused / failed / missing, round
  failed, evaluation, release written) -> `message`, with the log entry as details.

The terminal event is not decided here: only the runner knows whether the `flwr run` process
ended and whether a stop was asked for. This class remembers what that decision needs: the
release the ServerApp reported, and the last failure reason it logged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .supervisor import RunEvent
from ..serverapp.checkpoint import CheckpointError, CheckpointStore

__all__ = ["ProgressTranslator"]


@dataclass
class ProgressTranslator:
    """Turns the event-log records of one training into RunEvents, in order."""

    rounds: int
    population: str                  # RunConfig's: "disjoint" | "overlapping"
    checkpoint_dir: Path
    last_round: int = 0
    release: dict | None = None      # the `release_written` record, once seen
    failure: str = ""                # why the training failed, if the ServerApp said so
    seen: int = 0                    # how many records were translated so far
    _store: CheckpointStore | None = field(default=None, repr=False)

    def translate(self, record: dict) -> list[RunEvent]:
        self.seen += 1
        kind = str(record.get("event", ""))
        details = {k: v for k, v in record.items() if k not in ("event", "time")}
        # Entries after the rounds (training completed, evaluation, release) carry no round:
        # they belong to the last one completed.
        rnd = int(record.get("round") or 0) if "round" in record else self.last_round
        if kind == "round_completed":
            self.last_round = max(self.last_round, rnd)
            return [self._round(rnd, details)]
        if kind == "round_failed":
            where = "the statistics stage" if rnd == 0 else f"round {rnd}"
            self.failure = f"{where} failed: {record.get('reason', 'no reason given')}"
        elif kind == "release_written":
            self.release = details
        return [RunEvent("message", rnd, self._text(kind, record), {"event": kind, **details})]

    def _round(self, rnd: int, details: dict) -> RunEvent:
        by_site = self._epsilon_by_site(rnd)
        used, dropped = details.get("used", []), details.get("dropped", [])
        text = f"round {rnd}/{self.rounds} completed with {', '.join(used) or 'no site'}"
        if dropped:
            text += f"; dropped {', '.join(dropped)}"
        out = {**details, "rounds": self.rounds,
               "progress": round(rnd / self.rounds, 4) if self.rounds else 1.0}
        if by_site:
            from ..serverapp.release import across_sites  # the release's own rule (max or sum)

            out["epsilon_by_site"] = by_site
            out["epsilon_spent"] = across_sites(list(by_site.values()), self.population)
        return RunEvent("round", rnd, text, out)

    def _epsilon_by_site(self, rnd: int) -> dict[str, float]:
        """Each site's composed epsilon as its ledger reported it with its round reply (the same
        numbers the release manifest will carry). Progress must not fail on an unreadable
        checkpoint: the epsilon is then left out of this one event."""
        try:
            if self._store is None:
                self._store = CheckpointStore(self.checkpoint_dir)
            ckpt = self._store.load(rnd)
        except (OSError, ValueError, KeyError, CheckpointError):
            return {}
        ledgers = (ckpt.meta.get("ledgers") or {}) if ckpt else {}
        out = {}
        for site, ledger in ledgers.items():
            try:
                out[str(site)] = float(ledger["epsilon"])
            except (KeyError, TypeError, ValueError):
                continue
        return out

    @staticmethod
    def _text(kind: str, r: dict) -> str:
        """One line a person reads in `synthpool train watch`."""
        rnd = r.get("round")
        if kind.startswith("site_"):
            where = ("evaluation" if r.get("stage") == "evaluation" else
                     "statistics stage" if rnd == 0 else f"round {rnd}")
            text = f"{where}: site {r.get('site', '?')} {kind[5:]}: {r.get('reason', '')}"
            return text.rstrip(": ")
        if kind == "run_started":
            resumed = int(r.get("resume_after_round") or 0)
            return (f"the ServerApp started training {r.get('training_id', '')}"
                    + (f", resuming after round {resumed}" if resumed else ""))
        if kind == "stats_started":
            return f"statistics stage: asking {len(r.get('nodes', []))} site(s) for DP histograms"
        if kind == "stats_completed":
            return (f"statistics from {', '.join(r.get('sites', []))}: about "
                    f"{float(r.get('rows_estimate') or 0):.0f} rows in all (DP)")
        if kind == "round_started":
            return f"round {rnd} started with {len(r.get('nodes', []))} site(s)"
        if kind == "round_failed":
            where = "statistics stage" if rnd == 0 else f"round {rnd}"
            return f"{where} failed: {r.get('reason', '')}"
        if kind == "training_completed":
            return f"training completed after {r.get('rounds')} round(s)"
        if kind == "evaluation_started":
            return f"evaluation: {r.get('rows')} synthetic rows sent to the sites to score"
        if kind == "evaluation_completed":
            return f"evaluation: scored by {', '.join(r.get('sites', [])) or 'no site'}"
        if kind == "release_written":
            return (f"release written: {r.get('rows')} rows, release epsilon "
                    f"{float(r.get('epsilon') or 0):.3f}")
        return kind.replace("_", " ")
