"""The coordinator's durable training state: pooled weights after every round, and the event log.

Why: a coordinator can die at any moment (and Flower keeps no model state of ours). Restarted,
it must continue from the last COMPLETED round with the same training id, so the sites see the
same job ids and the same inputs again and answer from their release caches instead of charging
their ledgers a second time.

Layout of a checkpoint dir::

    training.json          written once at a fresh start: training id, study, first run config
    initial.npz            the weights every site starts round 1 from (built by the coordinator)
    start.json             the statistics stage: merged noisy histograms (the exact bytes sent
                           to the sites), each site's DP size and ledger; its commit point
    round-0003.npz         pooled weights after round 3 (arrays w0, w1, ...)
    round-0003.json        meta: round, sha256 of the .npz, sites used/dropped, time
    latest.json            {"round": 3}: the commit point, written LAST
    events.jsonl           one JSON object per line: round started/completed/failed, a site's
                           refusal, failure or absence (fsync'ed per event)
    transcript.jsonl       every reply every site sent: config and metric records in full, arrays
                           as shape + sha256 (what left each site, for audit)

Every file is written to a temp file beside it and `os.replace`d (common/atomic.py), so a reader
sees the old or the new version, never half; the .npz/.json pair is committed by latest.json, so
a crash between them leaves the previous round as "latest".
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...common.atomic import atomic_write_bytes, atomic_write_text


@dataclass
class Checkpoint:
    round: int
    weights: list[np.ndarray]
    meta: dict


class CheckpointError(RuntimeError):
    pass


class CheckpointStore:
    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.events = EventLog(self.dir / "events.jsonl")
        # Every reply every site sent (transport.record_transcript), for audit.
        self.transcript = EventLog(self.dir / "transcript.jsonl")

    # -- training identity ---------------------------------------------------------------------
    def training(self, study: str, run_config: dict) -> dict:
        """The training this directory belongs to; created on the first call. A directory holds
        one training of one study: resuming it with another study is an error, not a restart."""
        path = self.dir / "training.json"
        if path.exists():
            info = json.loads(path.read_text())
            if info["study"] != study:
                raise CheckpointError(f"{self.dir} holds a training of study {info['study']!r}, "
                                      f"not {study!r}: use another checkpoint-dir")
            return info
        info = {"training_id": uuid.uuid4().hex[:12], "study": study, "created_at": time.time(),
                "run_config": run_config}
        atomic_write_text(path, json.dumps(info, indent=1, sort_keys=True))
        return info

    # -- the statistics stage ------------------------------------------------------------------
    def save_start(self, start: dict, weights: list[np.ndarray]) -> None:
        """Merged statistics + initial weights; start.json (written last) commits both."""
        buf = io.BytesIO()
        np.savez(buf, **{f"w{i}": np.asarray(w) for i, w in enumerate(weights)})
        data = buf.getvalue()
        atomic_write_bytes(self.dir / "initial.npz", data)
        full = {**start, "n_arrays": len(weights), "sha256": hashlib.sha256(data).hexdigest(),
                "saved_at": time.time()}
        atomic_write_text(self.dir / "start.json", json.dumps(full, indent=1, sort_keys=True))

    def load_start(self) -> tuple[dict, list[np.ndarray]] | None:
        path = self.dir / "start.json"
        if not path.exists():
            return None
        start = json.loads(path.read_text())
        data = (self.dir / "initial.npz").read_bytes()
        if hashlib.sha256(data).hexdigest() != start["sha256"]:
            raise CheckpointError(f"{self.dir / 'initial.npz'}: contents do not match start.json")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            weights = [z[f"w{i}"] for i in range(start["n_arrays"])]
        return start, weights

    # -- rounds --------------------------------------------------------------------------------
    def _paths(self, rnd: int) -> tuple[Path, Path]:
        return self.dir / f"round-{rnd:04d}.npz", self.dir / f"round-{rnd:04d}.json"

    def save(self, rnd: int, weights: list[np.ndarray], meta: dict) -> Path:
        buf = io.BytesIO()
        np.savez(buf, **{f"w{i}": np.asarray(w) for i, w in enumerate(weights)})
        data = buf.getvalue()
        npz, meta_path = self._paths(rnd)
        atomic_write_bytes(npz, data)
        full = {**meta, "round": rnd, "n_arrays": len(weights), "saved_at": time.time(),
                "sha256": hashlib.sha256(data).hexdigest()}
        atomic_write_text(meta_path, json.dumps(full, indent=1, sort_keys=True))
        atomic_write_text(self.dir / "latest.json", json.dumps({"round": rnd}))  # commit point
        return npz

    def latest_round(self) -> int:
        try:
            return int(json.loads((self.dir / "latest.json").read_text())["round"])
        except FileNotFoundError:
            return 0

    def load(self, rnd: int | None = None) -> Checkpoint | None:
        rnd = self.latest_round() if rnd is None else rnd
        if rnd == 0:
            return None
        npz, meta_path = self._paths(rnd)
        meta = json.loads(meta_path.read_text())
        data = npz.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise CheckpointError(f"{npz}: contents do not match the sha256 in {meta_path.name}")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            weights = [z[f"w{i}"] for i in range(meta["n_arrays"])]
        return Checkpoint(rnd, weights, meta)


class EventLog:
    """Append-only JSON lines; each event is flushed and fsync'ed before the call returns, so
    what the log says happened survives the coordinator's crash."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def write(self, event: str, **fields) -> dict:
        record = {"time": time.time(), "event": event, **fields}
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        return record

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a torn last line after a crash
        return out
