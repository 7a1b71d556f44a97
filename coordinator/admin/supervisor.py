"""The training seam of the admin API: what a `TrainingRunner` is given (`TrainingOrder`), what it
reports (`RunEvent`), and the supervisor that drains each run's events into the database.

Training is delegated: the service records runs and their events, but the work is done by a
`TrainingRunner` (start / stop / events). The real one submits Flower runs to the coordinator's
SuperLink (coordinator/admin/flower_runner.py). One background thread per run drains the runner's
events into the database, so any number of `WatchTraining` streams (and a later restart) read the
same history, and a run's end is recorded even if nobody is watching.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

from . import state as st

log = logging.getLogger(__name__)

TERMINAL = ("finished", "failed", "stopped")


@dataclass(frozen=True)
class SiteInfo:
    name: str
    public_key: str
    fingerprint: str
    node_id: int | None = None   # its SuperNode id once approval registered its key


@dataclass(frozen=True, kw_only=True)
class TrainingOrder(st.StudyTerms):
    """One run of a study, as a runner receives it: the study's terms, the run's id, and its
    sites resolved (keys, SuperNode ids) when the run starts. (The ServerApp's own view of the
    training is its run config, coordinator/serverapp/run_config.py.)"""

    run_id: int
    sites: tuple[SiteInfo, ...]


@dataclass(frozen=True)
class RunEvent:
    """One progress event. `kind`: started | round | message | finished | failed | stopped; the
    last three end the run."""

    kind: str
    round: int = 0
    message: str = ""
    details: dict = field(default_factory=dict)


@runtime_checkable
class TrainingRunner(Protocol):
    """What the federation code implements so the admin API can drive training.

    `start` launches a run and returns promptly; `events` yields the run's events from its
    beginning and ends after a terminal event; `stop` asks the run to end (the runner then emits
    `stopped`). The service calls `events` once per run, from its own thread.
    """

    def start(self, study: TrainingOrder) -> None: ...

    def stop(self, study: str) -> None: ...

    def events(self, study: str) -> Iterator[RunEvent]: ...



class TrainingSupervisor:
    """Drains each run's runner events into the database and wakes the watchers."""

    def __init__(self, state: st.State, runner: TrainingRunner | None,
                 stop_timeout: float = 10.0) -> None:
        self.state = state
        self.runner = runner
        self.stop_timeout = stop_timeout
        self._changed = threading.Condition()
        self._threads: dict[int, threading.Thread] = {}
        self._stop_requested: set[int] = set()
        self._closed = False

    def close(self) -> None:
        """Stop recording: the server is shutting down. Runs still going are marked interrupted
        by the next start-up (State.interrupt_running), not by a half-stopped process now."""
        self._closed = True
        self._notify()

    def follow(self, run: st.RunRecord) -> None:
        thread = threading.Thread(target=self._pump, args=(run,), daemon=True,
                                  name=f"synthpool-run-{run.id}")
        self._threads[run.id] = thread
        thread.start()

    def stop(self, run: st.RunRecord) -> st.RunRecord:
        """Ask the runner to stop and wait (bounded) for it to confirm; a runner that does not
        confirm in time still has its run recorded as stopped, with a note."""
        self._stop_requested.add(run.id)
        assert self.runner is not None
        self.runner.stop(run.study)
        thread = self._threads.get(run.id)
        if thread is not None:
            thread.join(self.stop_timeout)
        with self.state.transaction():
            if self.state.get_run(run.id).status == st.RUN_RUNNING:
                message = (f"stop requested; the runner did not confirm within "
                           f"{self.stop_timeout:g} s")
                # The event first: a watcher that sees the run ended has the event to read.
                self.state.add_event(run.id, "stopped", message=message)
                self.state.end_run(run.id, st.RUN_STOPPED, message)
        self._notify()
        return self.state.get_run(run.id)

    def wait(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _pump(self, run: st.RunRecord) -> None:
        assert self.runner is not None
        final: RunEvent | None = None
        try:
            for event in self.runner.events(run.study):
                if self._closed:
                    return
                if event.kind in TERMINAL:
                    final = event
                    break
                self.state.add_event(run.id, event.kind, event.round, event.message, event.details)
                self._notify()
        except Exception as e:  # noqa: BLE001 - a runner bug must end the run, not the thread silently
            log.exception("runner failed during run %s", run.id)
            final = RunEvent("failed", message=f"runner error: {type(e).__name__}: {e}")
        if self._closed:
            return
        if final is None:
            final = (RunEvent("stopped", message="stopped on request")
                     if run.id in self._stop_requested else
                     RunEvent("failed", message="the runner's events ended without a final event"))
        status = {"finished": st.RUN_FINISHED, "failed": st.RUN_FAILED,
                  "stopped": st.RUN_STOPPED}[final.kind]
        try:
            with self.state.transaction():
                if self.state.get_run(run.id).status == st.RUN_RUNNING:
                    self.state.add_event(run.id, final.kind, final.round, final.message,
                                         final.details)
                    self.state.end_run(run.id, status, final.message)
        except Exception:  # noqa: BLE001
            log.exception("could not record the end of run %s", run.id)
        self._notify()

