import pytest

from synthpool.common.bundled import ADULT_SCHEMA
from synthpool.common.schema import Schema, SchemaError


def test_adult_schema_loads_and_roundtrips(tmp_path):
    schema = Schema.load(ADULT_SCHEMA)
    assert schema.target == "income"
    assert schema.column("capital-gain").point_masses == [0]
    out = tmp_path / "s.yaml"
    schema.save(out)
    again = Schema.load(out)
    assert again == schema
    assert again.fingerprint() == schema.fingerprint()


def test_fingerprint_changes_with_bounds():
    schema = Schema.load(ADULT_SCHEMA)
    raw = schema.model_dump(mode="json")
    raw["columns"][0]["upper"] = 91
    assert Schema.from_dict(raw).fingerprint() != schema.fingerprint()


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"name": "x", "columns": [{"name": "a", "kind": "numeric", "lower": 5, "upper": 1}]}, "lower must be < upper"),
        ({"name": "x", "target": "b", "columns": [{"name": "a", "kind": "boolean"}]}, "target 'b' is not a column"),
        ({"name": "x", "columns": [{"name": "a", "kind": "categorical", "categories": ["u", "u"]}]}, "categories repeat"),
        ({"name": "x", "columns": [{"name": "a", "kind": "text"}]}, "kind"),
        # A repeated point mass would count a row in two cells (sensitivity sqrt 2, not 1).
        ({"name": "x", "columns": [{"name": "a", "kind": "numeric", "lower": -1, "upper": 9,
                                    "point_masses": [0, -1, 0.0]}]}, "point masses repeat: 0"),
        ([1, 2], "a schema is a mapping"),
    ],
)
def test_invalid_schema_is_named(raw, fragment):
    with pytest.raises(SchemaError, match="invalid schema|mapping") as err:
        Schema.from_dict(raw, origin="study.yaml")
    assert fragment in str(err.value)
    assert "study.yaml" in str(err.value)


def test_unreadable_schema_file_names_path(tmp_path):
    with pytest.raises(SchemaError, match="missing.yaml"):
        Schema.load(tmp_path / "missing.yaml")
