"""The study schema: the public description of a table that every site and the coordinator share.

Everything the transforms need (category lists, numeric bounds, bin grids) comes from here, so
nothing is read from the private rows unless it is a DP query charged to a ledger. A schema file is
YAML; `Schema.load` validates it and `Schema.fingerprint` gives the hash that manifests record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from .digests import content_digest


class SchemaError(ValueError):
    """The schema file itself is wrong (not the data)."""


class _Column(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    nullable: bool = False
    description: str = ""


class CategoricalColumn(_Column):
    kind: Literal["categorical"] = "categorical"
    categories: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "CategoricalColumn":
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"column {self.name!r}: categories repeat")
        return self


class NumericColumn(_Column):
    kind: Literal["numeric"] = "numeric"
    lower: float
    upper: float
    integer: bool = False
    # "log" spaces the public bin grid geometrically: right for heavy tails (incomes, weights).
    scale: Literal["linear", "log"] = "linear"
    # Values that carry a point mass (capital-gain's 0): modelled as their own category and
    # decoded exactly, instead of being smeared over a bin.
    point_masses: list[float] = Field(default_factory=list)

    @model_validator(mode="after")
    def _bounds(self) -> "NumericColumn":
        if not self.lower < self.upper:
            raise ValueError(f"column {self.name!r}: lower must be < upper")
        for p in self.point_masses:
            if not self.lower <= p <= self.upper:
                raise ValueError(f"column {self.name!r}: point mass {p} outside bounds")
        # A repeated value would be a cell of its own twice: a row holding it would count in
        # both, so the histograms' sensitivity would be sqrt(2), not the 1 they are noised for.
        repeated = sorted({p for p in self.point_masses if self.point_masses.count(p) > 1})
        if repeated:
            raise ValueError(f"column {self.name!r}: point masses repeat: "
                             f"{', '.join(f'{p:g}' for p in repeated)}")
        return self


class BooleanColumn(_Column):
    """A two-valued column. `true` and `false` are how the table writes its two values
    (`true: "Y"`, `false: "N"`): the loader accepts exactly these (and native booleans in Parquet
    or SQL), and a release writes them, so the synthetic table speaks the table's vocabulary.
    Without them (older schemas) the loader accepts true/false, yes/no and 1/0 in any case
    (common/booleans.py), and a release writes True/False."""

    kind: Literal["boolean"] = "boolean"
    true: str | None = None
    false: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _yaml_booleans(cls, data):
        """YAML reads an unquoted `true:` key as the boolean True, and unquoted yes/no/on/off/
        true/false values as booleans, whose spelling is then lost: keys are mapped back, values
        must be quoted."""
        if not isinstance(data, dict):
            return data
        out = {}
        for k, v in data.items():
            key = {True: "true", False: "false"}.get(k, k) if isinstance(k, bool) else k
            if key in ("true", "false"):
                if isinstance(v, bool):
                    raise ValueError(f"column {data.get('name')!r}: write the spelling of "
                                     f"{key!r} in quotes (YAML reads an unquoted yes/no/true/"
                                     "false/on/off as a boolean, and its spelling is lost)")
                if isinstance(v, (int, float)):
                    v = str(v)
            out[key] = v
        return out

    @model_validator(mode="after")
    def _spellings(self) -> "BooleanColumn":
        if (self.true is None) != (self.false is None):
            raise ValueError(f"column {self.name!r}: give both spellings, 'true' and 'false', "
                             "or neither")
        if self.true is not None:
            for s in (self.true, self.false):
                if not s or s != s.strip():
                    raise ValueError(f"column {self.name!r}: spelling {s!r} must be non-empty "
                                     "text without surrounding spaces")
            if self.true == self.false:
                raise ValueError(f"column {self.name!r}: 'true' and 'false' are spelled alike")
        return self

    @model_serializer(mode="wrap")
    def _omit_unset_spellings(self, handler):
        # Older schemas (no spellings) keep their exact dump, so their fingerprint is unchanged.
        data = handler(self)
        for key in ("true", "false"):
            if data.get(key, 0) is None:
                del data[key]
        return data

    @property
    def spelled(self) -> bool:
        return self.true is not None


Column = Annotated[
    Union[CategoricalColumn, NumericColumn, BooleanColumn], Field(discriminator="kind")
]


class CsvOptions(BaseModel):
    """How raw text files of this study are written (Adult: no header, `?` for missing)."""

    model_config = ConfigDict(extra="forbid")
    header: bool = True
    separator: str = ","
    missing: list[str] = Field(default_factory=lambda: [""])
    comment: str | None = None
    skip_initial_space: bool = True


class Normalize(BaseModel):
    """Value clean-up applied to text cells before validation (Adult's test labels end in '.')."""

    model_config = ConfigDict(extra="forbid")
    strip: bool = True
    strip_suffix: list[str] = Field(default_factory=list)


EXACT_DRAFT = "exact-draft"


class Provenance(BaseModel):
    """One way values of this schema were read from private rows. A DP draft records each of its
    mechanisms with its (epsilon, delta); an exact draft records one `exact-draft` entry with no
    epsilon, so every site that uses it can tell it from a public schema and warn."""

    model_config = ConfigDict(extra="forbid")
    mechanism: str
    epsilon: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    delta: float = Field(default=0.0, ge=0, lt=1)
    columns: list[str] = Field(default_factory=list)
    purpose: str = ""
    # Whose rows were read: that site's ledger is charged the spend. None: the draft does not
    # say, so every site charges it (any of them may have drafted it).
    site: str | None = None
    # Ledger job id of the charge; a fresh one per draft, so two drafts are two charges.
    draft_id: str = ""

    @model_validator(mode="after")
    def _kind(self) -> "Provenance":
        if (self.epsilon is None) != (self.mechanism == EXACT_DRAFT):
            raise ValueError(f"provenance {self.mechanism!r}: a DP mechanism needs an epsilon "
                             f"and only {EXACT_DRAFT!r} (values read exactly) has none")
        return self

    def charged_at(self, site: str | None) -> bool:
        """Whether `site` (None: a single-site run) must charge this spend to its ledger."""
        return self.epsilon is not None and (site is None or self.site in (None, site))


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    target: str | None = None
    columns: list[Column] = Field(min_length=1)
    # Columns present in the source but never modelled (identifiers): validated for presence only.
    drop: list[str] = Field(default_factory=list)
    csv: CsvOptions = Field(default_factory=CsvOptions)
    normalize: Normalize = Field(default_factory=Normalize)
    # How bounds/categories were obtained when not public: a DP draft records its mechanisms
    # and (epsilon, delta) here, and every run on this schema composes that spend.
    provenance: list[Provenance] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> "Schema":
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names repeat")
        if set(names) & set(self.drop):
            raise ValueError(f"columns both modelled and dropped: {sorted(set(names) & set(self.drop))}")
        if self.target is not None:
            if self.target not in names:
                raise ValueError(f"target {self.target!r} is not a column")
            if self.column(self.target).kind == "numeric":
                raise ValueError(f"target {self.target!r} must be categorical or boolean")
        markers = {m.strip() for m in self.csv.missing}
        for c in self.columns:
            if isinstance(c, BooleanColumn) and c.spelled and {c.true, c.false} & markers:
                raise ValueError(f"column {c.name!r}: a spelling is also a csv missing marker")
        return self

    # -- access -------------------------------------------------------------------------------
    def describe(self) -> dict:
        """What a manifest says about the schema: which one, and how its values were obtained."""
        return {"name": self.name, "fingerprint": self.fingerprint(), "target": self.target,
                "provenance": [p.model_dump(mode="json", exclude_defaults=True)
                               for p in self.provenance]}

    def exact_draft_warning(self) -> str | None:
        """What every user of an exact draft is told: its values may be real people's."""
        exact = [p for p in self.provenance if p.mechanism == EXACT_DRAFT]
        if not exact:
            return None
        whose = ", ".join(sorted({p.site for p in exact if p.site})) or "a site's rows"
        return (f"schema {self.name!r} is an exact draft read from {whose} (provenance "
                f"{EXACT_DRAFT!r}): unless every category, bound and point mass in it was "
                "replaced with public values, sharing it disclosed real rows. Review it, then "
                f"remove the {EXACT_DRAFT!r} entry (every site pins the same file).")

    def column(self, name: str) -> CategoricalColumn | NumericColumn | BooleanColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def source_columns(self) -> list[str]:
        """Column order of a header-less file: modelled columns then dropped ones, as declared."""
        return self.names + self.drop if not self.csv.header else self.names

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return content_digest(canonical)

    # -- files --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> "Schema":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except OSError as e:
            raise SchemaError(f"{path}: cannot read schema: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise SchemaError(f"{path}: not valid YAML: {e}") from e
        return cls.from_dict(raw, origin=str(path))

    @classmethod
    def from_dict(cls, raw: object, origin: str = "<schema>") -> "Schema":
        if not isinstance(raw, dict):
            raise SchemaError(f"{origin}: a schema is a mapping with 'name' and 'columns'")
        try:
            return cls.model_validate(raw)
        except ValueError as e:
            raise SchemaError(f"{origin}: invalid schema:\n{e}") from e

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=True)
        # `kind` is the discriminator: always write it so the file reads on its own.
        data["columns"] = [c.model_dump(mode="json", exclude_defaults=True) | {"kind": c.kind}
                           for c in self.columns]
        return yaml.safe_dump(data, sort_keys=False, width=100)

    def save(self, path: str | Path) -> None:
        from .atomic import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())
