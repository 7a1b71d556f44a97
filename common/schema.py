"""The study schema: the public description of a table that every site and the coordinator share.

Everything the transforms need (category lists, numeric bounds, bin grids) comes from here, so
nothing is read from the private rows unless it is a DP query charged to a ledger. A schema file is
YAML; `Schema.load` validates it and `Schema.fingerprint` gives the hash that manifests record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


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
        return self


class BooleanColumn(_Column):
    kind: Literal["boolean"] = "boolean"


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


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    target: str | None = None
    columns: list[Column] = Field(min_length=1)
    # Columns present in the source but never modelled (identifiers): validated for presence only.
    drop: list[str] = Field(default_factory=list)
    csv: CsvOptions = Field(default_factory=CsvOptions)
    normalize: Normalize = Field(default_factory=Normalize)
    # How bounds/categories were obtained when not public: e.g. a DP draft records its mechanism
    # and (epsilon, delta) here, and every run on this schema composes that spend.
    provenance: list[dict] = Field(default_factory=list)

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
        return self

    # -- access -------------------------------------------------------------------------------
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
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()

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
