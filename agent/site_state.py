"""Everything a site remembers between Flower messages, kept in its state dir.

Why on disk: Flower starts a NEW `flwr-clientapp` process for every message (docs/ARCHITECTURE.md,
"Flower facts"), so nothing in memory survives from one round to the next. The state dir holds:

    ledger.sqlite            the privacy ledger (agent/ledger.py); made first, before the key
    agent.lock               flock-ed by the one agent running on this dir (agent/host/daemon.py)
    holdout.key              the secret key of the evaluation hold-out split (made once)
    reports/<study>/...      the site's full local evaluation report of each release
    locks/                   one lock file per job, held while it runs (`job_lock`)
    releases/<study>/...     every output this site released (noisy histograms of a training's
                             statistics stage, the weights of each round), keyed by ledger job id,
                             so a retried job returns the SAME output instead of a second draw
    plans/<study>/...        the DP-SGD noise a training was calibrated for, once per training
    cache/                   data fingerprints and encoded rows (pure speed, no privacy role)

A release is written (atomically) after the charge and before the reply. Combined with the
ledger's write-ahead charge, a crash at any point leaves either "charged, nothing released"
(harmless) or "charged and cached" (a retry re-sends the cached bytes: no new privacy loss).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..common.atomic import atomic_write_bytes, atomic_write_text, create_once
from ..common.digests import file_sha256
from ..common.schema import Schema
from .config import SiteConfig, load_site_config
from .ledger import Ledger

log = logging.getLogger(__name__)
READ_LINE_EVERY_S = 5.0

NODE_CONFIG_KEY = "site-config"


@dataclass(frozen=True)
class ReportedSize:
    """The size a site gives for FedAvg weights and its sample rate, and how it was obtained."""

    rows: float
    source: str  # "declared" (public, from site.toml) or "estimated" (the DP histograms' total)


@dataclass
class Release:
    """One output a site released under one ledger charge: model weights and/or a JSON payload
    (the statistics stage releases noisy histograms, no weights)."""

    weights: list[np.ndarray]
    metrics: dict
    input_hash: str
    payload: dict = field(default_factory=dict)


@dataclass
class SiteState:
    config: SiteConfig
    _memo: dict = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config_path(cls, path: str | Path) -> "SiteState":
        return cls(load_site_config(path))

    @classmethod
    def from_node_config(cls, node_config: dict) -> "SiteState":
        try:
            path = node_config[NODE_CONFIG_KEY]
        except KeyError:
            raise RuntimeError(f"this SuperNode was started without --node-config "
                               f"'{NODE_CONFIG_KEY}=\"/path/site.toml\"'") from None
        return cls.from_config_path(str(path))

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state_dir(self) -> Path:
        return self.config.state_dir

    @cached_property
    def ledger(self) -> Ledger:
        """The ledger, with this site's caps (from its own config) applied on every open."""
        ledger = Ledger(self.state_dir)
        self.config.apply_caps(ledger)
        return ledger

    @cached_property
    def schema(self) -> Schema:
        return self.config.schema()

    # -- data ---------------------------------------------------------------------------------
    def data_fingerprint(self) -> str:
        """sha256 of the data file, cached by (size, mtime) so a 1 GB table is hashed once."""
        path = self.config.site.data
        st = path.stat()
        key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
        memo = self.state_dir / "cache" / "data-fingerprint.json"
        try:
            cached = json.loads(memo.read_text())
            if cached.get("key") == key:
                return cached["sha256"]
        except (OSError, ValueError):
            pass
        digest = file_sha256(path)
        atomic_write_text(memo, json.dumps({"key": key, "sha256": digest}))
        return digest

    def load_table(self) -> pd.DataFrame:
        """The site's whole table, validated against the study schema (common/loading.py).
        Invalid cells raise `DataError` unless the owner set `on_invalid = "drop"`; either way the
        details stay in the site's log (the ClientApp sends only the error type)."""
        if "table" not in self._memo:
            from ..common.loading import load_table

            df, _report = load_table(self.config.site.data, self.schema,
                                     on_invalid=self.config.site.on_invalid,
                                     progress=_logged_read(self.config.site.data))
            self._memo["table"] = df
        return self._memo["table"]

    def load_rows(self) -> pd.DataFrame:
        """The rows every training uses: the table minus the evaluation hold-out."""
        return self._split()[0]

    def load_holdout(self) -> pd.DataFrame:
        """Rows no training ever sees, kept to score releases against (membership attacks and
        train-on-synthetic-test-on-real need real rows the generator did not learn from)."""
        return self._split()[1]

    def _split(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Each row goes to the hold-out when a keyed hash of its values falls below the hold-out
        fraction: stable across restarts, row order and appended rows, identical rows on the same
        side, and the key (secret, in the state dir) keeps anyone from steering a row's side."""
        if "split" not in self._memo:
            df = self.load_table()
            fraction = self.config.evaluation.holdout_fraction
            h = pd.util.hash_pandas_object(df, index=False, hash_key=self._holdout_key())
            aside = (h.to_numpy(np.uint64) / np.float64(2**64)) < fraction
            self._memo["split"] = (df[~aside].reset_index(drop=True),
                                   df[aside].reset_index(drop=True))
        return self._memo["split"]

    def _holdout_key(self) -> str:
        if "holdout_key" not in self._memo:
            path = self.state_dir / "holdout.key"
            create_once(path, secrets.token_hex(8).encode())
            key = path.read_text().strip()
            if len(key) != 16:
                raise RuntimeError(f"{path}: damaged hold-out key (expected 16 characters)")
            self._memo["holdout_key"] = key
        return self._memo["holdout_key"]

    @property
    def split_spec(self) -> str:
        return f"holdout={self.config.evaluation.holdout_fraction}:{self._holdout_key()}"

    def cached_array(self, kind: str, build) -> np.ndarray:
        """An array derived from the rows (e.g. an encoding), cached in the state dir under the
        data and schema fingerprints so later messages skip the parse. Read back memory-mapped:
        a training gathers its batches from the page cache, so a 5M-row site holds no copy."""
        key = hashlib.sha256(
            f"{kind}:{self.data_fingerprint()}:{self.schema.fingerprint()}:{self.split_spec}".encode()
        ).hexdigest()[:24]
        path = self.state_dir / "cache" / f"{kind}-{key}.npy"
        if path.exists():
            return np.load(path, mmap_mode="r")
        buf = io.BytesIO()
        np.save(buf, np.asarray(build()))
        atomic_write_bytes(path, buf.getvalue())
        return np.load(path, mmap_mode="r")

    def forget_rows(self) -> None:
        """Drop the parsed table: what follows needs only arrays cached from it, and a training
        should hold no more of a big table than its memory-mapped tokens."""
        self._memo.pop("table", None)
        self._memo.pop("split", None)

    # -- releases -----------------------------------------------------------------------------
    def _release_dir(self, study: str) -> Path:
        return self.state_dir / "releases" / safe_file_name(study)

    def _release_path(self, study: str, job_id: str) -> Path:
        return self._release_dir(study) / f"{safe_file_name(job_id)}.npz"

    def has_release(self, study: str, job_id: str) -> bool:
        return self._release_path(study, job_id).exists()

    def load_release(self, study: str, job_id: str) -> Release | None:
        path = self._release_path(study, job_id)
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["__meta__"]))
            weights = [z[f"w{i}"] for i in range(meta["n"])]
        return Release(weights, meta["metrics"], meta["input_hash"], meta.get("payload", {}))

    @contextlib.contextmanager
    def job_lock(self, study: str, job_id: str):
        """Held while a job is checked against the cache and run: a second task for the same job
        (the SecAgg+ masking stage while the job trains ahead, a retry) waits, then finds the
        release. A flock, so the kernel releases it if its holder dies mid-job."""
        path = self.state_dir / "locks" / f"{safe_file_name(study)}-{safe_file_name(job_id)}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def save_release(self, study: str, job_id: str, release: Release) -> None:
        buf = io.BytesIO()
        meta = {"n": len(release.weights), "metrics": release.metrics,
                "input_hash": release.input_hash, "payload": release.payload}
        arrays = {f"w{i}": w for i, w in enumerate(release.weights)}
        np.savez(buf, __meta__=np.array(json.dumps(meta)), **arrays)
        atomic_write_bytes(self._release_path(study, job_id), buf.getvalue())


def safe_file_name(name: str) -> str:
    """A job id or study as a file name (ids contain '/' and ':')."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return out + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def input_hash(weights: list[np.ndarray], config: dict) -> str:
    """What a job was asked to do: the global weights it starts from plus its config."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for w in weights:
        w = np.ascontiguousarray(w)
        h.update(str((w.dtype.str, w.shape)).encode())
        h.update(w.tobytes())
    return h.hexdigest()


__all__ = ["SiteState", "ReportedSize", "Release", "input_hash", "safe_file_name", "NODE_CONFIG_KEY"]


def _logged_read(path: Path):
    """A big table takes minutes to parse: say how far in the site's log every few seconds
    (the log stays at the site; nothing about the table's size leaves it)."""
    start = time.monotonic()
    last = [start]  # a table parsed within the interval says nothing

    def line(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= READ_LINE_EVERY_S or (done >= total and last[0] > start):
            last[0] = now
            log.info("reading %s: %.0f of %.0f MiB, %.0f s", path, done / 2**20, total / 2**20,
                     now - start)
    return line
