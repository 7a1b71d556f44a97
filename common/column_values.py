"""What a cell of each column kind may hold, and how its text reads as a value: the rules of the
schema's three column kinds, in one place for everything that reads rows.

Per kind (a missing cell is allowed only in a nullable column; which cells are missing is the
reader's business: the schema's markers in text files, NULL in Parquet and SQL):

- numeric: a number (parsed exactly, `parse_numbers`) inside [lower, upper], whole for an integer
  column;
- categorical: one of the schema's categories;
- boolean: the schema's spellings (`true: "Y"`, `false: "N"`), or for a schema without spellings
  true/false, yes/no, 1/0 in any case (common/booleans.py); a stored boolean (Parquet, SQL's 0/1)
  has no spelling and is accepted as such.

Two readers apply them (`read_values`):

- the loader (common/loading.py), strictly: every cell breaking a rule is a problem, reported
  with `expected` (or its row dropped);
- the evaluation (common/evaluation/tables.py:conform), with `tolerant=True`: synthetic rows are
  scored, not refused, and what breaks the schema is what the evaluation counts (values outside
  the bounds, categories the schema lacks: boundary adherence, category coverage, `<other>`), so
  such values are kept as they are; only a cell that cannot be read as its kind at all (text in a
  number column, a boolean in no spelling) becomes missing. A generator other than ours may spell
  booleans any common way, so the evaluation reads every spelling of common/booleans.py.

Problems are found per DISTINCT value (a column's dictionary), so checking costs O(distinct
values), not O(rows).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .booleans import FALSE_WORDS, TRUE_WORDS, UNSPELLED_FALSE, UNSPELLED_TRUE
from .schema import BooleanColumn, CategoricalColumn, NumericColumn

# Per-cell problem codes (0 = fine); the message for each comes from `expected`.
OK, MISSING, BAD, BOUNDS, NOT_INT = 0, 1, 2, 3, 4


# -- reading text ---------------------------------------------------------------------------------


def canonical_text(v) -> str:
    """Typed (Parquet/SQL) value as the text a CSV would hold, so both validate alike."""
    if isinstance(v, (bool, np.bool_)):
        return "true" if v else "false"
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def distinct_texts(s: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values as text) of a column; code -1 = no value (NULL/NaN)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        codes = s.cat.codes.to_numpy()
        uniq = np.asarray(s.cat.categories, dtype=object)
        if len(uniq) and pd.api.types.infer_dtype(uniq, skipna=False) != "string":
            uniq = np.array([canonical_text(u) for u in uniq], dtype=object)
    else:
        codes, uniq = pd.factorize(s, use_na_sentinel=True)
        uniq = np.array([canonical_text(u) for u in uniq], dtype=object)
    return np.asarray(codes, dtype=np.int64), uniq


def per_row(values: np.ndarray, codes: np.ndarray, null) -> np.ndarray:
    """values[codes] (one per distinct value, to one per row) with code -1 (no value) as `null`."""
    ext = np.empty(len(values) + 1, dtype=values.dtype)
    ext[:-1] = values
    ext[-1] = null
    return ext[np.where(codes < 0, len(values), codes)]


def native_bools(s: pd.Series) -> np.ndarray:
    """Per distinct value of a typed column, in `distinct_texts`' order: 1 for a stored True (or
    the number 1, SQL's usual boolean), 0 for a stored False (or 0), -1 for anything else."""
    uniq = s.cat.categories if isinstance(s.dtype, pd.CategoricalDtype) else pd.factorize(
        s, use_na_sentinel=True)[1]

    def truth(u) -> int:
        if isinstance(u, (bool, np.bool_)):
            return int(bool(u))
        if isinstance(u, (int, float, np.integer, np.floating)) and u in (0, 1):
            return int(u)
        return -1

    return np.array([truth(u) for u in uniq], dtype=np.int8)


def parse_numbers(texts: np.ndarray) -> np.ndarray:
    """Exact float parse (NaN where not a number). pandas' fast parser decides what is a number;
    Python's float() gives the value, because the former can be off by an ulp and a CSV must load
    to the same floats as the Parquet file of the same table."""
    coarse = pd.to_numeric(pd.Series(texts, dtype=object), errors="coerce").to_numpy(float)
    out = np.full(len(texts), np.nan)
    ok = ~np.isnan(coarse)
    try:
        out[ok] = np.asarray(texts[ok], dtype=np.float64)
    except (ValueError, TypeError):
        for i in np.flatnonzero(ok):
            try:
                out[i] = float(texts[i])
            except ValueError:
                pass
    return out


# -- the rules ----------------------------------------------------------------------------------


def numeric_problems(x: np.ndarray, col: NumericColumn) -> np.ndarray:
    """Problem code per value of a parsed numeric array (NaN handled by the caller)."""
    p = np.zeros(len(x), dtype=np.int8)
    with np.errstate(invalid="ignore"):
        if col.integer:
            p[np.isfinite(x) & (x != np.floor(x))] = NOT_INT
        p[(x < col.lower) | (x > col.upper) | np.isinf(x)] = BOUNDS
    return p


def read_values(col, texts: np.ndarray, native: np.ndarray | None = None, *,
                tolerant: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The distinct present cells `texts` (normalised text) of column `col` as its values, with a
    problem code per text (see the module's docstring for the rules). `native`: per text, 1 or 0
    for a stored True or False (`native_bools`; typed sources only), -1 else. `tolerant`: the
    evaluation's reading, where only a cell unreadable as its kind is a problem (value NaN)."""
    if isinstance(col, NumericColumn):
        values = parse_numbers(texts)
        problems = np.zeros(len(texts), dtype=np.int8) if tolerant else numeric_problems(values, col)
        problems[np.isnan(values)] = BAD
        return values, problems
    if isinstance(col, CategoricalColumn):
        values = np.array(texts, dtype=object)
        if tolerant:  # a category the schema lacks is counted by the evaluation, not refused
            return values, np.zeros(len(texts), dtype=np.int8)
        return values, np.where(np.isin(texts, col.categories), OK, BAD).astype(np.int8)
    if not isinstance(col, BooleanColumn):
        raise TypeError(f"unsupported column {col!r}")
    if col.spelled:
        is_true, is_false = texts == col.true, texts == col.false
    else:
        low = np.array([t.lower() for t in texts], dtype=object)
        is_true, is_false = np.isin(low, UNSPELLED_TRUE), np.isin(low, UNSPELLED_FALSE)
    if native is not None:  # a stored boolean (or SQL's 0/1) has no spelling: accept it as such
        is_true, is_false = is_true | (native == 1), is_false | (native == 0)
    if tolerant:
        low = np.array([t.strip().lower() for t in texts], dtype=object)
        other = ~(is_true | is_false)
        is_true |= other & np.isin(low, list(TRUE_WORDS))
        is_false |= other & np.isin(low, list(FALSE_WORDS))
    values = np.full(len(texts), np.nan, dtype=object)
    values[is_true] = True
    values[is_false] = False
    return values, np.where(is_true | is_false, OK, BAD).astype(np.int8)


def clip_to_bounds(x: np.ndarray, col: NumericColumn) -> tuple[np.ndarray, np.ndarray]:
    """`x` with values outside the bounds set to the nearest valid value (for an integer column
    the nearest whole number inside them), and which values were; NaN stays NaN."""
    lower, upper = col.lower, col.upper
    if col.integer:  # the nearest whole number inside the bounds
        lower, upper = math.ceil(lower), math.floor(upper)
    with np.errstate(invalid="ignore"):
        out = (x < lower) | (x > upper)
    return np.where(out, np.clip(x, lower, upper), x), out


# -- messages ---------------------------------------------------------------------------------


def format_bound(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def bounds_text(col: NumericColumn) -> str:
    return f"[{format_bound(col.lower)}, {format_bound(col.upper)}]"


def expected(col, problem: int, target: str | None) -> str:
    """What a cell with `problem` should have held, for a message naming it."""
    if problem == MISSING:
        why = "the target" if col.name == target else "the column"
        return f"a value ({why} is not nullable)"
    if isinstance(col, NumericColumn):
        rng = bounds_text(col)
        if problem == NOT_INT:
            return f"a whole number in {rng} (the column is integer)"
        if problem == BOUNDS:
            return f"a number in {rng} (the schema's public bounds)"
        return f"a number in {rng}"
    if isinstance(col, CategoricalColumn):
        some = ", ".join(repr(c) for c in col.categories[:6])
        more = ", ..." if len(col.categories) > 6 else ""
        return f"one of the {len(col.categories)} categories: {some}{more}"
    if isinstance(col, BooleanColumn) and col.spelled:
        return f"a boolean: {col.true!r} (true) or {col.false!r} (false), as the schema spells them"
    return "a boolean: true/false, yes/no or 1/0 (any case)"
