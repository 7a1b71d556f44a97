"""The UCI Adult data shipped with synthpool for the demo and tests (CC BY 4.0, see adult.names)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).parent / "datasets"

ADULT_TRAIN = _HERE / "adult" / "adult.data.gz"
ADULT_TEST = _HERE / "adult" / "adult.test.gz"
ADULT_SCHEMA = _HERE / "adult.yaml"
# A study schema is named by a path or by one of these (site.toml's `schema`, the run config's).
BUNDLED_SCHEMAS = {"bundled:adult": ADULT_SCHEMA}
DEFAULT_SCHEMA = "bundled:adult"
ATTRIBUTION = (
    "UCI Adult data set, Becker & Kohavi (1996), CC BY 4.0, https://doi.org/10.24432/C5XW20"
)


def schema_path(ref: str) -> Path:
    """The file a study schema reference names: a bundled schema's, or the path itself."""
    return Path(BUNDLED_SCHEMAS.get(ref, ref))
