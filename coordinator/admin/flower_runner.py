"""The admin API's training backend: a study becomes a real Flower run on the coordinator's
SuperLink (supervisor.TrainingRunner).

`start` submits `flwr run APP CONN --stream` (the same command an operator types, and that
synthpool/local_federation.py drives in tests) with a run config built from the study; `events`
follows the training through the ServerApp's event log (coordinator/admin/training_progress.py) and
ends with one terminal event when the `flwr run` process ends; `stop` stops the Flower run
(`flwr stop`) and the `flwr run` process.

Layout under `work_dir` (default `<state_dir>/training`; serve-admin `--training-dir`), the
only folder the ServerApp writes: with separate accounts for the SuperLink and serve-admin
(deploy/OPERATOR.md) it is shared by their group, and everything else stays serve-admin's::

    run-<id>/schema.yaml      the study's schema as the admin API stored it (run config `schema`)
    run-<id>/checkpoints/     the ServerApp's checkpoint dir: weights, events.jsonl, transcript
    run-<id>/release/         the ServerApp's release, unsigned
    logs/run-<id>.log         the output of `flwr run --stream` (the ServerApp's own log)
    nodes.json                SuperNode id -> site name, shared by all trainings

When the run finished, the release is copied to `<releases_dir>/.staging/<name>` (serve-admin's
own), checked and signed there, and moved to `<releases_dir>/<name>`: the admin API lists a
release once it is complete and signed, never half-written, what is signed is what was checked,
and a failed or stopped run publishes nothing.

What the study decides is not open to the operator's settings (RESERVED_KEYS): the study name
(which is what each site's budget table is named after), its schema, its epsilon, rounds, rows,
population and sites. The operator's `settings` (serve-admin `--run-config`) choose the rest:
model size, local steps, timeouts, evaluation.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from ...common.schema import Schema, SchemaError
from ...common.wire import model_setting
from ..serverapp.checkpoint import CheckpointStore
from .supervisor import RunEvent, TrainingOrder
from .release_signing import ReleaseRefused, ReleaseTerms, sign_release, take_release
from .flower_processes import (
    CONNECTION, ManagedProcess, ProcessGroup, flower_run_status, stop_flower_run,
)
from .training_progress import ProgressTranslator

__all__ = ["FlowerRunner", "RESERVED_KEYS", "parse_settings", "runner_for_coordinator"]

log = logging.getLogger(__name__)

# Run-config keys the runner derives from the study (or from where it keeps files).
RESERVED_KEYS = frozenset({
    "study", "schema", "target-epsilon", "target-delta", "num-rounds", "population",
    "release-rows", "expected-sites", "checkpoint-dir", "release-dir",
    "node-registry", "node-ids", "node-sites",
})
STAGING = ".staging"  # a dot-folder: ReleaseStore never lists it
# Folders the ServerApp writes in: the group (the SuperLink's, which serve-admin's account joins
# under separate accounts) may write, and new entries keep that group (setgid).
SHARED_DIR_MODE = 0o2770
# The config-only Flower app a checkout carries (serve-admin --app-dir names another).
APP_DIR = Path(__file__).resolve().parents[2] / "deploy" / "app"
# `flwr run` prints this once the SuperLink accepted the run (flwr/cli/run/run.py).
FLOWER_RUN_ID = re.compile(r"Successfully started run (\d+)")


@dataclass
class FlowerRun:
    """One study's training as this runner drives it."""

    study: TrainingOrder
    workdir: Path
    checkpoint_dir: Path
    staging_dir: Path
    release_name: str
    run_config: dict
    process: ManagedProcess
    started: float = field(default_factory=time.monotonic)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    flower_run_id: int | None = None
    flower_status: str = ""          # the SuperLink's last word on the run (`flwr ls`)
    stop_done: threading.Event = field(default_factory=threading.Event)
    stop_note: str = ""


class FlowerRunner:
    """Trains studies as Flower runs on the SuperLink named by connection `connection` in
    `flwr_home`/config.toml (the same FLWR_HOME serve-admin's `--superlink-flwr-home` names).

    `settings`: run config for every training (keys of the app's `[tool.flwr.app.config]`,
    except RESERVED_KEYS); `min-sites` among them is capped at the study's number of sites.
    `run_timeout`: a run still going after this many seconds is stopped and reported failed
    (None: the ServerApp's own node and round timeouts are the only bound)."""

    def __init__(self, *, flwr_home: Path, work_dir: Path, releases_dir: Path,
                 signing_key: Path | None = None, app_dir: Path = APP_DIR,
                 connection: str = CONNECTION, settings: Mapping[str, object] | None = None,
                 poll_interval: float = 1.0, run_timeout: float | None = None,
                 stop_wait: float = 5.0) -> None:
        self.flwr_home, self.connection = Path(flwr_home), connection
        self.work_dir, self.releases_dir = Path(work_dir), Path(releases_dir)
        self.signing_key = Path(signing_key) if signing_key else None
        self.app_dir = Path(app_dir)
        self.settings = _check_settings(dict(settings or {}), self.app_dir)
        self.poll_interval, self.run_timeout, self.stop_wait = poll_interval, run_timeout, stop_wait
        self.procs = ProcessGroup(self.work_dir)
        self._runs: dict[str, FlowerRun] = {}
        self._lock = threading.Lock()

    # -- the TrainingRunner protocol -------------------------------------------------------------
    def start(self, study: TrainingOrder) -> None:
        """Write the schema, submit the Flower run; returns once `flwr run` is started (the
        SuperLink's answer is read by `events`). Raises if the run cannot be submitted."""
        with self._lock:
            current = self._runs.get(study.name)
            if current is not None and current.process.alive:
                raise RuntimeError(f"study {study.name!r} already has a Flower run in progress")
        if not (self.app_dir / "pyproject.toml").is_file():
            raise FileNotFoundError(f"no Flower app in {self.app_dir} (serve-admin --app-dir)")
        workdir = self.work_dir / f"run-{study.run_id}"
        if not self.work_dir.exists():  # under the units the SuperLink's start script made it
            _shared_dir(self.work_dir)
        try:
            _shared_dir(workdir)
        except FileExistsError:
            # A fresh admin database would count run ids from 1 again; reusing the folder would
            # resume another training's checkpoints.
            raise FileExistsError(f"{workdir} exists from an earlier run {study.run_id}; move it "
                                  "away before training again") from None
        schema_path = workdir / "schema.yaml"
        schema_path.write_text(study.schema_yaml)
        schema_path.chmod(0o640)  # the ServerApp's account reads it
        _check_schema(schema_path, study.schema_fingerprint)
        name = f"{study.name[:80]}-run-{study.run_id}"
        checkpoint_dir = _shared_dir(workdir / "checkpoints")
        staging = _shared_dir(workdir / "release")
        config = self.run_config(study, schema_path=schema_path, checkpoint_dir=checkpoint_dir,
                                 release_dir=staging)
        process = self.procs.start_run(self.app_dir, flwr_home=self.flwr_home,
                                       run_config=config, name=f"run-{study.run_id}",
                                       connection=self.connection)
        with self._lock:
            self._runs[study.name] = FlowerRun(study, workdir, checkpoint_dir, staging, name,
                                               config, process)
        log.info("study %s: run %s submitted (pid %s, log %s)", study.name, study.run_id,
                 process.pid, process.log_path)

    def stop(self, study: str) -> None:
        """Stop the Flower run on the SuperLink, then the `flwr run` process; `events` then ends
        with `stopped`."""
        with self._lock:
            run = self._runs.get(study)
        if run is None:
            return
        run.stop_requested.set()
        try:
            deadline = time.monotonic() + self.stop_wait
            while self._flower_run_id(run) is None and run.process.alive and \
                    time.monotonic() < deadline:
                time.sleep(0.2)  # `flwr run` is still submitting: its run id is moments away
            # The Flower run first: once the SuperLink ends it, `flwr run --stream` ends too.
            self._stop_flower_run(run)
            run.process.stop(grace=5.0)
        finally:
            run.stop_done.set()

    def events(self, study: str) -> Iterator[RunEvent]:
        with self._lock:
            run = self._runs[study]
        progress = ProgressTranslator(run.study.rounds, run.run_config["population"],
                                      run.checkpoint_dir)
        announced = False
        while True:
            alive = run.process.alive
            if not announced and self._flower_run_id(run) is not None:
                announced = True
                yield self._started(run)
            yield from self._progress(run, progress)
            if not alive:
                break
            if run.stop_requested.is_set():
                time.sleep(self.poll_interval)  # `stop` is at work; it ends the process
                continue
            if self._overdue(run, progress):
                run.process.stop(grace=5.0)
                break
            run.stop_requested.wait(self.poll_interval)
        if not announced and self._flower_run_id(run) is not None:
            yield self._started(run)
        yield from self._progress(run, progress)
        if progress.release is None and not progress.failure:
            yield from self._follow_detached(run, progress)
        yield self._outcome(run, progress)

    def _follow_detached(self, run: FlowerRun, progress: ProgressTranslator) -> Iterator[RunEvent]:
        """`flwr run --stream` can end before the run does (e.g. its connection to the SuperLink
        dropped) while the ServerApp trains on: keep following the event log until the SuperLink
        says the run finished, rather than calling a live training failed."""
        if run.flower_run_id is None:
            return
        while not run.stop_requested.is_set():
            try:
                status = flower_run_status(self.flwr_home, run.flower_run_id, self.connection)
            except Exception:  # noqa: BLE001 - the SuperLink is gone: report what we know
                return
            run.flower_status = status
            if not status or status.startswith("finished"):
                yield from self._progress(run, progress)
                return
            if self._overdue(run, progress):
                return
            yield from self._progress(run, progress)
            run.stop_requested.wait(max(self.poll_interval, 5.0))

    def _overdue(self, run: FlowerRun, progress: ProgressTranslator) -> bool:
        """Past `run_timeout`: stop the Flower run and record why it failed."""
        if self.run_timeout is None or time.monotonic() - run.started <= self.run_timeout:
            return False
        self._stop_flower_run(run)
        progress.failure = f"the run did not end within {self.run_timeout:g} s and was stopped"
        return True

    # -- what a run is told ----------------------------------------------------------------------
    def run_config(self, study: TrainingOrder, *, schema_path: Path, checkpoint_dir: Path,
                   release_dir: Path) -> dict:
        """The run config of the study's training (RunConfig's keys, coordinator/serverapp/run_config.py)."""
        n = len(study.sites)
        config = {
            **self.settings,
            "study": study.name,
            "schema": str(schema_path),
            "target-epsilon": float(study.epsilon),
            "target-delta": float(study.delta),
            "num-rounds": int(study.rounds),
            "population": study.population,
            # Wait for every approved site before the first stage; carry on with fewer only if
            # the operator allowed it (min-sites).
            "expected-sites": n,
            "min-sites": min(int(self.settings.get("min-sites", n)), n),
            "checkpoint-dir": str(checkpoint_dir),
            "release-dir": str(release_dir),
            "node-registry": str(self.work_dir / "nodes.json"),
        }
        if study.rows > 0:
            config["release-rows"] = int(study.rows)
        # Who each SuperNode is comes from the coordinator's enrollment records (approval
        # registered the site's key), never from what a reply says; only these nodes are asked
        # (one SuperLink serves many studies). A site without a registered key would be
        # whichever node first answered under its name: such a run is refused.
        unregistered = sorted(s.name for s in study.sites if s.node_id is None)
        if unregistered:
            raise ValueError(f"sites {unregistered} have no registered SuperNode key: approve "
                             "them while serve-admin reaches the SuperLink (node authentication "
                             "on), so that each node is known to be its site")
        config["node-sites"] = json.dumps({str(s.node_id): s.name for s in study.sites},
                                          sort_keys=True)
        return config

    # -- following a run -------------------------------------------------------------------------
    def _flower_run_id(self, run: FlowerRun) -> int | None:
        if run.flower_run_id is None:
            found = FLOWER_RUN_ID.search(run.process.log_tail(200_000))
            if found:
                run.flower_run_id = int(found.group(1))
        return run.flower_run_id

    def _started(self, run: FlowerRun) -> RunEvent:
        sites = [s.name for s in run.study.sites]
        return RunEvent("started", 0, f"Flower run {run.flower_run_id} with {len(sites)} "
                        f"site(s): {', '.join(sites)}",
                        {"flower_run_id": run.flower_run_id, "sites": sites,
                         "release": run.release_name, "run_config": run.run_config,
                         "log": str(run.process.log_path)})

    @staticmethod
    def _progress(run: FlowerRun, progress: ProgressTranslator) -> Iterator[RunEvent]:
        if not (run.checkpoint_dir / "events.jsonl").exists():
            return
        records = CheckpointStore(run.checkpoint_dir).events.read()
        for record in records[progress.seen:]:
            yield from progress.translate(record)

    def _outcome(self, run: FlowerRun, progress: ProgressTranslator) -> RunEvent:
        """The terminal event, once `flwr run` has ended."""
        rnd = progress.last_round
        if run.stop_requested.is_set():
            run.stop_done.wait(120)  # `flwr stop` may still be answering
            return RunEvent("stopped", rnd, "stopped on request" + run.stop_note,
                            {"flower_run_id": run.flower_run_id})
        if progress.release is not None:
            try:
                name = self._publish(run)
            except (OSError, ReleaseRefused) as e:
                return RunEvent("failed", rnd, f"the release could not be published: {e}")
            return RunEvent("finished", rnd, f"release {name} published",
                            {"release": name, "rows": progress.release.get("rows"),
                             "epsilon": progress.release.get("epsilon"),
                             "flower_run_id": run.flower_run_id})
        reason = progress.failure or self._why_ended(run)
        return RunEvent("failed", rnd, reason, {"flower_run_id": run.flower_run_id,
                                                "log": str(run.process.log_path)})

    def _why_ended(self, run: FlowerRun) -> str:
        """A run that ended without a release or a logged failure: say what Flower says, and the
        end of `flwr run`'s output (the ServerApp's traceback, or why the submission failed)."""
        status = run.flower_status
        if run.flower_run_id is not None and not status:
            try:
                status = flower_run_status(self.flwr_home, run.flower_run_id, self.connection)
            except Exception as e:  # noqa: BLE001 - only for the message
                status = f"status unknown: {e}"
        tail = _last_lines(run.process.log_tail(4000), 4)
        what = (f"Flower run {run.flower_run_id} ended ({status or 'status unknown'})"
                if run.flower_run_id is not None else
                f"`flwr run` exited with {run.process.popen.returncode} before the SuperLink "
                "accepted the run")
        return f"{what} without a release; last output: {' '.join(tail)[-600:]}"

    def _publish(self, run: FlowerRun) -> str:
        """Copy the finished release out of the ServerApp's reach, check and sign it (the
        ServerApp holds no key), then move it into the releases under a name no other release
        has."""
        if not (run.staging_dir / "manifest.json").is_file():
            raise OSError(f"{run.staging_dir} holds no manifest.json")
        staged = take_release(run.staging_dir, self.releases_dir / STAGING / run.release_name)
        if self.signing_key is not None:
            study = run.study
            sign_release(staged, self.signing_key, ReleaseTerms(
                study=study.name, sites=frozenset(s.name for s in study.sites),
                population=study.population, max_rows=study.rows,
                schema_fingerprint=study.schema_fingerprint or ""))
        final = self.releases_dir / run.release_name
        n = 1
        while final.exists():
            n += 1
            final = self.releases_dir / f"{run.release_name}.{n}"
        staged.rename(final)
        return final.name

    def _stop_flower_run(self, run: FlowerRun) -> None:
        if self._flower_run_id(run) is None:
            run.stop_note = ("; the SuperLink had not confirmed the run yet, so only `flwr run` "
                             "was stopped")
            log.warning("study %s: stopped before the SuperLink named the run", run.study.name)
            return
        try:
            stop_flower_run(self.flwr_home, run.flower_run_id, self.connection)
            run.stop_note = f" (Flower run {run.flower_run_id} stopped)"
        except Exception as e:  # noqa: BLE001 - e.g. the run had already ended
            run.stop_note = f"; `flwr stop {run.flower_run_id}` failed: {e}"
            log.warning("study %s: flwr stop %s failed: %s", run.study.name, run.flower_run_id, e)

    def close(self) -> None:
        """Stop the `flwr run` processes (the server is shutting down). The Flower runs
        themselves go on on the SuperLink; the admin API marks them interrupted at its next
        start, and a release they write stays unsigned in their `run-<id>/release/`."""
        self.procs.stop_all(grace=3.0)


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BOX = "│╭╮╰╯─┃━"


def _shared_dir(path: Path) -> Path:
    """A new folder with SHARED_DIR_MODE whatever the umask (serve-admin's unit has 0077). Only
    a folder this process made: one the SuperLink's account owns cannot be chmod-ed by ours."""
    path.mkdir(parents=True)
    path.chmod(SHARED_DIR_MODE)
    return path


def _last_lines(text: str, n: int) -> list[str]:
    """The last `n` lines of a CLI's output that say something: Flower colours its log and
    draws its errors in boxes (rich); neither belongs in a one-line reason."""
    lines = (ANSI.sub("", ln).strip().strip(BOX).strip() for ln in text.splitlines())
    return [ln for ln in lines if ln][-n:]


# -- configuration -------------------------------------------------------------------------------

def parse_settings(items: list[str]) -> dict[str, object]:
    """`["local-steps=40", "family=cvae", "model.hidden=64", "evaluate=false"]` -> typed values
    (TOML literals; anything that is not one is taken as a string). `model.KEY` settings are the
    family's hyperparameters: they are gathered into the run config's one `model` setting."""
    out: dict[str, object] = {}
    model: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ValueError(f"run config {item!r}: expected KEY=VALUE")
        try:
            typed = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            typed = value
        if key.startswith("model."):
            model[key.removeprefix("model.")] = typed
        else:
            out[key] = typed
    if model:
        try:
            given = json.loads(str(out.get("model") or "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"run config model: not a JSON mapping ({e})") from None
        out["model"] = model_setting({**given, **model})
    return out


def _check_settings(settings: dict, app_dir: Path) -> dict:
    reserved = sorted(RESERVED_KEYS & settings.keys())
    if reserved:
        raise ValueError(f"run config {', '.join(reserved)}: set by the study, not by the "
                         "operator")
    try:
        app = tomllib.loads((app_dir / "pyproject.toml").read_text())
        known = app["tool"]["flwr"]["app"]["config"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        known = None  # checked again when a run starts; the app may be installed later
    if known is not None:
        unknown = sorted(settings.keys() - known.keys())
        if unknown:
            raise ValueError(f"run config {', '.join(unknown)}: not a setting of the app in "
                             f"{app_dir}")
    for key, value in settings.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"run config {key}: a string, number or boolean, not {value!r}")
    if "min-sites" in settings and int(settings["min-sites"]) < 1:
        raise ValueError("run config min-sites: at least 1")
    return settings


def _check_schema(path: Path, fingerprint: str) -> None:
    """The ServerApp reads the schema from this file and every site compares its fingerprint
    with the schema it pinned (agent/clientapp/app.py): it must be the schema the study was
    created with, byte for byte in meaning."""
    try:
        got = Schema.load(path).fingerprint()
    except SchemaError as e:
        raise ValueError(f"the study's schema does not load: {e}") from None
    if fingerprint and got != fingerprint:
        raise ValueError(f"the study's schema has fingerprint {got}, not the recorded "
                         f"{fingerprint}")


def runner_for_coordinator(state_dir: Path, flwr_home: Path, *, releases_dir: Path | None = None,
                           training_dir: Path | None = None, app_dir: Path | None = None,
                           settings: Mapping[str, object] | None = None,
                           run_timeout: float | None = None) -> FlowerRunner:
    """The runner `synthpool coordinator serve-admin` uses when it is given the SuperLink's
    FLWR_HOME: trainings under `<state_dir>/training`, releases where the admin API lists them
    (the same default as AdminServer), signed with the coordinator's release key."""
    from .pki import CoordinatorPKI

    pki = CoordinatorPKI(Path(state_dir))
    return FlowerRunner(flwr_home=flwr_home,
                        work_dir=Path(training_dir or Path(state_dir) / "training"),
                        releases_dir=Path(releases_dir or Path(state_dir) / "releases"),
                        signing_key=pki.signing_key, app_dir=Path(app_dir or APP_DIR),
                        settings=settings, run_timeout=run_timeout)
