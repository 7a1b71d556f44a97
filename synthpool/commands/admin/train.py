"""`synthpool train`: start, stop and watch training."""

import json
from typing import Optional

import typer

from synthpool.protos import admin_pb2 as pb

from .client import api_command, command_group, enum_name, format_time, message_dict, show

app = command_group("Start, stop and watch training.")


def _run_text(r) -> str:
    return f"run {r.id} of {r.study}: {enum_name(pb.RunStatus, r.status, 'RUN_STATUS_')}" + \
        (f" ({r.message})" if r.message else "")


@api_command(app, "start")
def train_start(client, as_json, study: str = typer.Argument(...)):
    """Start training a study."""
    r = client.StartTraining(pb.StartTrainingRequest(study=study))
    show(as_json, message_dict(r), lambda: print(_run_text(r)))


@api_command(app, "stop")
def train_stop(client, as_json, study: str = typer.Argument(...)):
    """Stop a study's running training."""
    r = client.StopTraining(pb.StopTrainingRequest(study=study))
    show(as_json, message_dict(r), lambda: print(_run_text(r)))


@api_command(app, "watch")
def train_watch(client, as_json,
                study: str = typer.Argument(...),
                run_id: int = typer.Option(0, "--run", help="Default: the latest run."),
                after: int = typer.Option(0, "--after", help="Only events after this seq.")):
    """Follow a run's progress until it ends; exit 1 if it failed."""
    last = None
    lines = WatchLines()
    for ev in client.WatchTraining(pb.WatchTrainingRequest(study=study, run_id=run_id,
                                                           after_seq=after)):
        last = ev.kind
        if as_json:
            print(json.dumps(message_dict(ev), sort_keys=True), flush=True)
        else:
            line = lines.line(ev)
            if line is not None:
                print(line, flush=True)
    if last == "failed":
        if not as_json:
            for hint in lines.hints(study):
                print(hint, flush=True)
        raise typer.Exit(1)


class WatchLines:
    """`train watch`'s human lines: each round with every site's epsilon (what its ledger
    reported) and the release's, and a SecAgg+ protocol stage only when it changes (Flower's
    workflow may enter one stage several times; the repeats say nothing new)."""

    def __init__(self) -> None:
        self._stage: Optional[tuple] = None
        self.spent: set[str] = set()      # sites that refused: the study's cap is reached
        self.no_budget: set[str] = set()  # sites that refused: no [budgets.STUDY] table

    def line(self, ev) -> Optional[str]:
        try:
            details = json.loads(ev.details_json or "{}")
        except ValueError:
            details = {}
        if not isinstance(details, dict):
            details = {}
        if details.get("event") == "site_refused":
            reason, site = str(details.get("reason", "")), str(details.get("site", "?"))
            if " > cap " in reason:          # agent/ledger.py's BudgetExceeded
                self.spent.add(site)
            elif "no privacy budget configured" in reason:   # agent/ledger.py's NoBudget
                self.no_budget.add(site)
        where = f"round {ev.round}" if ev.kind == "round" else ev.kind
        text = ev.message
        if details.get("event") == "secagg_stage":
            stage = (ev.round, details.get("stage"))
            if stage == self._stage:
                return None
            self._stage = stage
            where = f"round {ev.round}"
            text = (f"SecAgg+ stage {details.get('stage', '?')} with "
                    f"{len(details.get('nodes') or [])} site(s)")
        elif ev.kind == "round":
            text += _epsilon_text(details)
        return f"{format_time(ev.at)}  {where:>10}  {text}"

    def hints(self, study: str) -> list[str]:
        """What to do after a run that failed on the sites' budgets (OPERATOR.md, "Run a study")."""
        out = []
        if self.spent:
            sites = ", ".join(sorted(self.spent))
            out.append(f"the budget of study {study!r} is spent at {sites}: "
                       "a study's epsilon serves one training, and training it again is refused. "
                       "A new training needs a new study (`synthpool studies create NEWNAME ...`) "
                       "and a [budgets.NEWNAME] table in every site's site.toml, each agent then "
                       "restarted (OPERATOR.md, \"Run a study\")")
        if self.no_budget:
            out.append(f"no [budgets.{study}] table at {', '.join(sorted(self.no_budget))}: each "
                       "site's administrator adds one to site.toml (the cap they agree to) and "
                       "restarts the agent")
        return out


def _epsilon_text(details: dict) -> str:
    by_site = details.get("epsilon_by_site") or {}
    if not isinstance(by_site, dict) or not by_site:
        return ""
    sites = ", ".join(f"{name} {float(eps):.3f}" for name, eps in sorted(by_site.items()))
    out = f"; epsilon spent: {sites}"
    if details.get("epsilon_spent") is not None:
        out += f" (release {float(details['epsilon_spent']):.3f})"
    return out

