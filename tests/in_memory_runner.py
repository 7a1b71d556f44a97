"""A TrainingRunner that trains nothing, for tests of the admin API itself (the real runner,
coordinator/admin/flower_runner.py, has its own real-process tests)."""

from __future__ import annotations

import threading
from typing import Iterator

from synthpool.coordinator.admin.supervisor import RunEvent, TrainingOrder


class InMemoryRunner:
    """A runner that trains nothing: it emits `started`, one `round` event per round (with a
    made-up linear epsilon spend) and `finished`, `round_delay` seconds apart. For tests and for
    trying the admin API before the federation is wired in."""

    def __init__(self, round_delay: float = 0.01, fail_at_round: int | None = None) -> None:
        self.round_delay = round_delay
        self.fail_at_round = fail_at_round
        self._runs: dict[str, tuple[TrainingOrder, threading.Event]] = {}
        self._lock = threading.Lock()
        self.started: list[TrainingOrder] = []

    def start(self, study: TrainingOrder) -> None:
        with self._lock:
            self._runs[study.name] = (study, threading.Event())
            self.started.append(study)

    def stop(self, study: str) -> None:
        with self._lock:
            if study in self._runs:
                self._runs[study][1].set()

    def events(self, study: str) -> Iterator[RunEvent]:
        with self._lock:
            info, stop = self._runs[study]
        yield RunEvent("started", message=f"run {info.run_id} with {len(info.sites)} sites",
                       details={"sites": [s.name for s in info.sites]})
        for rnd in range(1, info.rounds + 1):
            if stop.wait(self.round_delay):
                yield RunEvent("stopped", rnd - 1, "stopped on request")
                return
            if rnd == self.fail_at_round:
                yield RunEvent("failed", rnd, "simulated failure")
                return
            yield RunEvent("round", rnd, f"round {rnd}/{info.rounds}",
                           {"epsilon_spent": info.epsilon * rnd / info.rounds})
        yield RunEvent("finished", info.rounds, "done")


