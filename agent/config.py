"""A site's configuration file (site.toml): who the site is, where its rows and state live, which
SuperLink it joins, and the privacy caps its owner allows per study.

Why a file owned by the site: everything that limits what leaves the site (the caps, the data
path, the declared size) must be decided by the data owner, never by the coordinator. The ClientApp
re-reads this file in every message (it runs in a fresh process each time) and only ever LOWERS
what a round asks for: a round cannot raise a cap, point at other data, or switch off noise.

Example::

    [site]
    name = "hospital-a"
    data = "data/adult_a.csv"          # relative paths are relative to this file
    state_dir = "state"
    schema = "bundled:adult"           # or a path to the study schema YAML
    # size = "declared"; declared_rows = 10000   # a public size instead of the DP estimate
    size = "estimated"                 # the row count of the site's DP histograms (no extra charge)
    torch_threads = 0                  # threads for training; 0 = every core this process may use

    [superlink]
    address = "127.0.0.1:9092"
    insecure = false
    root_certificates = "ca.pem"       # the coordinator's CA (TLS); insecure = true on loopback only

    [supernode]
    port = 9094                        # the node's local Runtime API port
    authenticate = true                # sign with the key made by `synthpool-agent enroll`

    [trust]                            # which Flower app this site runs (agent/host/fab_policy.py)
    clientapp = "synthpool.agent.clientapp.app:app"   # the only ClientApp component it loads
    fab_sha256 = []                    # optional: the only FAB hashes it accepts

    [evaluation]
    holdout_fraction = 0.15            # rows set aside before training, to score releases on
    share_scores = false               # true: also send the (not DP) aggregate scores

    [budgets.adult]                    # one table per study this site takes part in
    epsilon = 3.0
    delta = 1e-5

    [site_budget]                      # optional: the most this site spends over ALL studies,
    epsilon = 5.0                      # every study's charges composed together (the same
    delta = 1e-5                       # people's rows serve every study)

Removing a `[budgets.STUDY]` table (or `[site_budget]`) removes that cap from the ledger at the
next message or start: a study without a table can be charged no more.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..common.bundled import BUNDLED_SCHEMAS, DEFAULT_SCHEMA, schema_path
from ..common.budget import check_delta, check_epsilon
from ..common.schema import Schema
from .host.fab_policy import DEFAULT_ALLOWED_FILES, PINNED_CLIENTAPP, TrustPolicy



class ConfigError(ValueError):
    """The site's configuration file is wrong."""


class Budget(BaseModel):
    """A cap at this site (a study's, or the site-wide one): a finite epsilon > 0 and a delta
    strictly inside (0, 1) (common/privacy.py:check_budget; the ledger refuses other caps too)."""

    model_config = ConfigDict(extra="forbid")
    epsilon: float
    delta: float

    @field_validator("epsilon")
    @classmethod
    def _epsilon(cls, v: float) -> float:
        return check_epsilon(v)

    @field_validator("delta")
    @classmethod
    def _delta(cls, v: float) -> float:
        return check_delta(v)


class SiteSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    data: Path
    state_dir: Path
    schema_ref: str = Field(default=DEFAULT_SCHEMA, alias="schema")
    # Rows with cells outside the schema: refuse to work ("error") or drop them ("drop").
    on_invalid: Literal["error", "drop"] = "error"
    # The size the site gives for FedAvg weights and its Poisson sample rate: "estimated" is the
    # row total of the DP histograms it releases in a training's statistics stage (already
    # charged, so no separate size query); "declared" is a size the owner declares public.
    size: Literal["estimated", "declared"] = "estimated"
    declared_rows: int | None = Field(default=None, gt=0)
    # CPU threads torch may use in a round (0: all cores available to the process). Sites sharing
    # one host (the demo) split the cores between them.
    torch_threads: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _declared(self) -> "SiteSection":
        if self.size == "declared" and self.declared_rows is None:
            raise ValueError("size = 'declared' needs declared_rows")
        return self


class SuperLinkSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    address: str
    # TLS by default: plain HTTP is a choice written in the file, for a test on one host.
    insecure: bool = False
    root_certificates: Path | None = None

    @model_validator(mode="after")
    def _tls(self) -> "SuperLinkSection":
        if not self.insecure and self.root_certificates is None:
            raise ValueError("[superlink] needs root_certificates (the coordinator's CA) to "
                             "speak TLS; only for a test on one host, set insecure = true")
        return self


class SuperNodeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: int = Field(default=9094, gt=0, lt=65536)
    # Sign every request with the site's enrolled key (agent/identity.py): required when the
    # coordinator's SuperLink admits enrolled sites only.
    authenticate: bool = False
    # Extra flags passed to flower-supernode verbatim (e.g. auth keys), owner's choice.
    extra_args: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _isolation(self) -> "SuperNodeSection":
        # The agent runs the SuperNode in `--isolation process` so that only its own launcher
        # (agent/host/trusted_exec.py) starts app processes; another isolation mode would let Flower
        # start the coordinator's app itself, unchecked.
        for arg in self.extra_args:
            if _abbreviates(arg, "--isolation"):
                raise ValueError(f"extra_args may not set --isolation (found {arg!r}): the agent "
                                 "runs the SuperNode in process isolation so that it checks "
                                 "every app first")
        return self


def _abbreviates(arg: str, flag: str) -> bool:
    """Whether `arg` names `flag` to argparse, which flower-supernode uses with its default
    allow_abbrev: any unambiguous prefix (`--isol subprocess`, `--isolat=subprocess`) sets it."""
    name = arg.split("=", 1)[0]
    return len(name) > 2 and flag.startswith(name)


class TrustSection(BaseModel):
    """Which Flower app (FAB) this site runs; see agent/host/fab_policy.py. A FAB that ships code,
    names another ClientApp, or (with pins) has another hash is refused before it runs."""

    model_config = ConfigDict(extra="forbid")
    # The ClientApp component: the only one loaded, from this site's own installation.
    clientapp: str = PINNED_CLIENTAPP
    # The exact paths a FAB may hold besides Flower's manifest (.info/CONTENT); never code.
    allowed_files: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_FILES))
    # The sha256 of each FAB this site accepts; empty: any FAB that passes the other checks.
    fab_sha256: list[str] = Field(default_factory=list)
    # true: train only in SecAgg+ rounds, so the coordinator never sees this site's update alone
    # (a plain round is refused; statistics and evaluation stages are unaffected).
    require_secure_aggregation: bool = False

    @model_validator(mode="after")
    def _valid(self) -> "TrustSection":
        self.fab_sha256 = [h.strip().lower().removeprefix("sha256:") for h in self.fab_sha256]
        self.policy()  # raises ValueError (a config error) on a bad component, file or hash
        return self

    def policy(self) -> TrustPolicy:
        return TrustPolicy(clientapp=self.clientapp, allowed_files=frozenset(self.allowed_files),
                           fab_sha256=frozenset(self.fab_sha256))


class EvaluationSection(BaseModel):
    """How the site scores a release (agent/clientapp/site_evaluation.py). The hold-out split is made once,
    before any training, from a secret key in the state dir: the same rows stay aside for every
    study, so scoring never sees a row the generator was trained on."""

    model_config = ConfigDict(extra="forbid")
    holdout_fraction: float = Field(default=0.15, ge=0.0, le=0.5)
    # The aggregate scores are not DP (each is one number averaged over the site's rows, and a
    # coordinator that crafts the sample can read membership out of them): they stay at the site
    # unless its owner opts in, and the release's manifest and report then say so.
    share_scores: bool = False


class SiteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    site: SiteSection
    superlink: SuperLinkSection
    supernode: SuperNodeSection = Field(default_factory=SuperNodeSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    trust: TrustSection = Field(default_factory=TrustSection)
    budgets: dict[str, Budget] = Field(default_factory=dict)
    site_budget: Budget | None = None
    path: Path | None = Field(default=None, exclude=True)

    @property
    def name(self) -> str:
        return self.site.name

    @property
    def state_dir(self) -> Path:
        return self.site.state_dir

    def schema(self) -> Schema:
        ref = self.site.schema_ref
        return Schema.load(schema_path(ref))

    def apply_caps(self, ledger) -> None:
        """Make the ledger's caps this file's: the only way a cap is ever set or removed."""
        site = self.site_budget
        ledger.apply_caps({study: (b.epsilon, b.delta) for study, b in self.budgets.items()},
                          None if site is None else (site.epsilon, site.delta))


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and validate site.toml; relative paths resolve against the file's folder."""
    path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read site config: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: invalid site config:\n{e}") from e
    base = path.parent
    site = cfg.site
    site.data = (base / site.data).resolve()
    site.state_dir = (base / site.state_dir).resolve()
    if site.schema_ref not in BUNDLED_SCHEMAS:
        site.schema_ref = str((base / site.schema_ref).resolve())
    if cfg.superlink.root_certificates is not None:
        cfg.superlink.root_certificates = (base / cfg.superlink.root_certificates).resolve()
    cfg.path = path
    return cfg
