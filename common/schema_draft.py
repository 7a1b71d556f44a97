"""Draft a study schema from a site's own table, either disclosively (to be reviewed) or with DP.

A schema is meant to be *public*: every category and bound in it is shared with the coordinator and
the other sites and ends up beside the released data. Reading them off the rows leaks: the maximum
age is the oldest patient's age, a category seen once proves someone has it. So a draft is either

* exact (no `epsilon`): fast and convenient, but every value must be reviewed and replaced with
  public knowledge (a data dictionary, published ranges, code lists); the warnings say so; or
* differentially private (`epsilon` given): bounds, categories and point masses come from noisy
  histograms, the spend is written to `schema.provenance` so every run on this schema composes
  it, and values too rare to release safely are left out by design.

Both modes read a few structural facts exactly (which columns exist, each column's kind, whether a
numeric column is integer-valued, which columns are identifiers or free text, how a boolean
column spells its two values): those are not covered by DP and the warnings ask for them to be
confirmed against public documentation. A boolean's spellings are the two values that made it a
boolean, the same two labels a categorical draft of the column would list (and its kind is read
from them anyway). Only an exact draft's warnings give the counts behind a column's kind.

Identifiers (nearly every value distinct, or values that look like record codes) and free text
(most rows hold a value seen only a few times, or too many distinct values to model) are listed
under `drop` rather than modelled (`_unmodellable`): as categories they would list nearly every
value, which trains slowly, releases poorly and, in an exact draft, discloses each one. A target
is never dropped; it is warned about instead.

Point masses (a single value held by many rows: capital-gain's 0, a -1 that codes "never
contacted") are a numeric column's values held by at least POINT_MASS_SHARE of its present rows.
The exact draft counts them; the DP draft finds them with a stability-based histogram over the
values that occur (keys are data-dependent, hence the delta), with a quarter of the column's
epsilon (POINT_MASS_EPSILON), the rest going to its bounds.

Adjacency: the DP mechanisms here are calibrated for *replacing* one row (L1 sensitivity 2 for a
histogram), which also covers adding or removing one, the relation Opacus' accountant uses.
Laplace noise comes from numpy, which is not hardened against floating-point attacks (Mironov 2012);
that is acceptable for a one-off draft but is one more reason to prefer public values.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .booleans import BOOLEAN_PAIRS, FALSE_WORDS, TRUE_WORDS
from .column_values import canonical_text, parse_numbers
from .schema import EXACT_DRAFT, CsvOptions, Schema

NUMERIC_MIN_DISTINCT = 20  # fewer distinct numbers than this: a code list, modelled as categories
# A two-valued column is boolean when its values are boolean words (true/false, yes/no, 1/0, t/f,
# y/n; common/booleans.py); the schema records how the table spells them, and the loader accepts
# exactly that.
RARE = 5  # exact drafts warn about categories seen fewer times than this
# Public grid of magnitudes for DP bounds: cells [2^k, 2^(k+1)) for k in [K_MIN, K_MAX), their
# mirror images, a cell for exact 0 and one each for magnitudes below 2^K_MIN.
K_MIN, K_MAX = -10, 62
GRID_FAILURE = 0.05  # chance that noise alone lifts any empty grid cell over the threshold
# A numeric value held by at least this share of the column's present rows gets its own token.
# 5% is one bin's share at the default 20 bins: a value holding more would fill a bin (or more)
# alone and be smeared over its cells instead of being decoded exactly, and the model could not
# tell it from its neighbours; at most 20 such values exist, so the token count stays small.
POINT_MASS_SHARE = 0.05
# Share of a numeric column's DP-draft epsilon spent on finding point masses, the rest on bounds.
# Bounds decide which rows load at all, and their grid needs every cell's count; point masses are
# values of at least POINT_MASS_SHARE of the rows, which clear the stability threshold
# (about 30 / eps rows at delta 1e-7) with a small part of the budget once a table has a few
# thousand rows.
POINT_MASS_EPSILON = 0.25
LOG_SPAN = 4  # doublings between the median and the top cell that make a column 'log' scale
# A text column is an identifier when at least this share of its present values are distinct. Not
# only 1.0: a patient entered twice or a reused record number must not turn an ID column into
# thousands of categories; and a real category column that is 95% distinct holds almost only
# values of one row each, which the model cannot learn and a release must not list anyway.
ID_DISTINCT_SHARE = 0.95
# ... or when at least CODE_SHARE of its distinct values look like record codes (`_CODE`): 0.9
# tolerates a few free-form entries ('unknown', 'n/a') among the codes. Only with at least
# CODE_MIN_DISTINCT distinct values, and at least CODE_MIN_DISTINCT_SHARE of the present rows (on
# average at most 20 rows per value: a person's few visits), since a short list of codes each
# held by many rows (wards, stores, sites) is a grouping and a fine category.
CODE_SHARE = 0.9
CODE_MIN_DISTINCT = 100
CODE_MIN_DISTINCT_SHARE = 0.05
# A text column is free text when more than this share of its present rows hold a value seen fewer
# than RARE times: then most rows carry a value the model sees too rarely to learn, that an exact
# draft would disclose and a DP draft would leave out, so most rows would fail to load anyway.
FREE_TEXT_RARE_SHARE = 0.5
# ... or when it has more distinct values than this, however common each: every category is a
# token of the model's vocabulary and an output of its head, and past about a thousand that one
# column dominates training time; such a column is better coarsened to a public list first.
MAX_CATEGORIES = 1000


@dataclass
class _Profile:
    """Exact facts about one column. `counts` is indexed by the distinct values as text."""

    name: str
    kind: str  # numeric | categorical | boolean | id | text | empty
    counts: pd.Series
    missing: int
    numbers: np.ndarray | None  # parsed `counts.index`, when every value is a number
    integer: bool = False
    spellings: tuple[str, str] | None = None  # a boolean's (true, false) as the table writes them
    why: str | None = None  # what made an 'id' or 'text' column one, from the exact counts


def _spellings(texts: list[str]) -> tuple[str, str] | None:
    """(true, false) spellings of a column whose one or two distinct values are boolean words,
    one of each; None if they are not. An unseen value is spelled like its partner (Y -> N)."""
    true = [t for t in texts if t.lower() in TRUE_WORDS]
    false = [t for t in texts if t.lower() in FALSE_WORDS]
    if len(true) > 1 or len(false) > 1 or len(true) + len(false) != len(texts) or not texts:
        return None
    if true and false:
        return true[0], false[0]
    seen = (true or false)[0]
    low = seen.lower()
    other = BOOLEAN_PAIRS[low] if true else next(k for k, v in BOOLEAN_PAIRS.items() if v == low)
    other = (other.upper() if seen.isupper() else other.title() if seen.istitle() and
             len(seen) > 1 else other)
    return (seen, other) if true else (other, seen)


def _profile(name: str, s: pd.Series) -> _Profile:
    present = s.notna()
    codes, uniq = pd.factorize(s[present], use_na_sentinel=True)
    text = [canonical_text(u).strip() for u in uniq]
    counts = pd.Series(np.bincount(codes, minlength=len(uniq)), index=text, dtype=np.int64)
    counts = counts.groupby(level=0, sort=False).sum()
    missing = int((~present).sum())
    if counts.empty:
        return _Profile(name, "empty", counts, missing, None)
    numbers = parse_numbers(np.asarray(counts.index, dtype=object))
    numbers = numbers if np.isfinite(numbers).all() else None
    integer = numbers is not None and bool(np.all(numbers == np.floor(numbers)))
    if (unmodellable := _unmodellable(counts, missing, numbers, integer)) is not None:
        kind, why = unmodellable
        return _Profile(name, kind, counts, missing, numbers, integer, why=why)
    if (spellings := _spellings(list(counts.index))) is not None and (
            numbers is None or set(numbers) <= {0.0, 1.0}):
        return _Profile(name, "boolean", counts, missing, numbers, integer, spellings)
    if numbers is not None and len(counts) > NUMERIC_MIN_DISTINCT:
        kind = "numeric"
    else:
        kind = "categorical"
    return _Profile(name, kind, counts, missing, numbers, integer)


# -- identifiers and free text -------------------------------------------------------------------

_CODE = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}"  # a UUID
                   r"|(?=[a-f]*[0-9])[0-9a-f]{16,}"  # a hash or hex key (a digit: not a word)
                   r"|[a-z0-9]{0,6}[-_]?[0-9]{5,}",  # a short prefix, then a long run of digits
                   re.IGNORECASE)


_RULES = {"id": "nearly every value distinct, or values that look like record codes",
          "text": f"most rows hold a value seen fewer than {RARE} times, or more than "
                  f"{MAX_CATEGORIES:,} distinct values"}


def _percent(share: float) -> str:
    """Rounded down, so that '100%' means all of them and a warning never overstates."""
    return f"{math.floor(share * 100)}%"


def _unmodellable(counts: pd.Series, missing: int, numbers: np.ndarray | None,
                  integer: bool) -> tuple[str, str] | None:
    """('id' or 'text', why) for a column to drop rather than model, None for one to model.
    Read from the exact counts: a structural fact, which the warnings ask to be confirmed."""
    present, distinct = int(counts.sum()), len(counts)
    if distinct <= NUMERIC_MIN_DISTINCT:
        return None  # a short list is a code list, however rare its values are in a small table
    unique = f"{_percent(distinct / present)} of values distinct ({distinct:,} in {present:,} rows)"
    if numbers is not None:
        # A measurement (a weight, an amount in cents) is nearly all distinct too: only a whole
        # number in every row, each different, reads as a row number or record ID.
        return ("id", unique) if integer and missing == 0 and distinct == present else None
    if distinct >= ID_DISTINCT_SHARE * present:
        return "id", unique
    if distinct >= max(CODE_MIN_DISTINCT, CODE_MIN_DISTINCT_SHARE * present):
        codes = sum(_CODE.fullmatch(v) is not None for v in counts.index)
        if codes >= CODE_SHARE * distinct:
            return "id", (f"{unique}, and {_percent(codes / distinct)} of the distinct values look "
                          "like record codes (long runs of digits, hex keys, UUIDs)")
    rare_rows = int(counts[counts < RARE].sum())
    if rare_rows > FREE_TEXT_RARE_SHARE * present or distinct > MAX_CATEGORIES:
        many = f" (more than {MAX_CATEGORIES:,})" if distinct > MAX_CATEGORIES else ""
        singletons = int((counts == 1).sum())
        return "text", (f"{distinct:,} distinct values{many}, {_percent(singletons / distinct)} "
                        f"of them seen once; values seen fewer than {RARE} times hold "
                        f"{_percent(rare_rows / present)} of its {present:,} rows")
    return None


# -- the public magnitude grid --------------------------------------------------------------------

_CELLS = K_MAX - K_MIN + 1  # per sign: index 0 is (0, 2^K_MIN), index j >= 1 is [2^(K_MIN+j-1), ..)


def _cell_lo(j: int) -> float:
    return 0.0 if j == 0 else 2.0 ** (K_MIN + j - 1)


def _cell_hi(j: int) -> float:
    return 2.0 ** (K_MIN + j)


def _grid_counts(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(negative cells, zero count, positive cells) of `values` repeated `weights` times.
    Every value lands in exactly one cell, which is what bounds the histogram's sensitivity."""
    mag = np.abs(values)
    _, exp = np.frexp(mag)  # mag = m * 2^exp, m in [0.5, 1): floor(log2 mag) = exp - 1, exactly
    j = np.clip(exp - 1 - K_MIN + 1, 0, _CELLS - 1)
    neg, pos = np.zeros(_CELLS), np.zeros(_CELLS)
    np.add.at(neg, j[values < 0], weights[values < 0])
    np.add.at(pos, j[values > 0], weights[values > 0])
    return neg, float(weights[values == 0].sum()), pos


def _grid_bounds(neg: np.ndarray, zero: float, pos: np.ndarray,
                 t: float) -> tuple[float, float] | None:
    """Outermost cells whose count exceeds `t`; their outer edges are the bounds."""
    neg_ok, pos_ok, zero_ok = np.flatnonzero(neg > t), np.flatnonzero(pos > t), zero > t
    if not (len(neg_ok) or len(pos_ok) or zero_ok):
        return None
    if len(neg_ok):
        lower = -_cell_hi(int(neg_ok.max()))
    else:
        lower = 0.0 if zero_ok else _cell_lo(int(pos_ok.min()))
    if len(pos_ok):
        upper = _cell_hi(int(pos_ok.max()))
    else:
        upper = 0.0 if zero_ok else -_cell_lo(int(neg_ok.min()))
    return lower, (upper if upper > lower else lower + 1.0)


def _grid_shape(neg, zero, pos, t: float, lower: float) -> dict:
    """Scale and point mass from the same (exact or noisy) histogram, so they cost nothing more:
    a big share of exact zeros becomes a point mass (capital-gain's 0), and a top cell far above
    the median cell (a heavy right tail) asks for a geometric bin grid."""
    clipped = np.concatenate([np.clip(neg, 0, None), [max(zero, 0.0)], np.clip(pos, 0, None)])
    total = clipped.sum()
    out: dict = {}
    if zero > t and total > 0 and zero >= POINT_MASS_SHARE * total:
        out["point_masses"] = [0.0]
    pos_c = np.clip(pos, 0, None)
    pos_ok = np.flatnonzero(pos > t)
    if lower >= 0 and len(pos_ok) and pos_c.sum() > 0:
        median = int(np.searchsorted(np.cumsum(pos_c), pos_c.sum() / 2))
        if pos_ok.max() - median >= LOG_SPAN:
            out["scale"] = "log"
    return out


# -- per-kind column drafts ---------------------------------------------------------------------


def _category_order(values: list[str]) -> list[str]:
    nums = parse_numbers(np.asarray(values, dtype=object))
    if len(values) and np.isfinite(nums).all():
        return [v for _, v in sorted(zip(nums, values))]
    return sorted(values)


def _value_counts(p: _Profile) -> pd.Series:
    """Rows per distinct number ('1' and '1.0' are one value), in value order."""
    return pd.Series(p.counts.to_numpy(np.float64), index=p.numbers).groupby(level=0).sum()


def _with_point_masses(col: dict, masses: list[float]) -> dict:
    """Merge `masses` (those inside the bounds) into `col`'s point masses, sorted."""
    inside = [float(m) for m in masses if col["lower"] <= m <= col["upper"]]
    merged = sorted(set(col.get("point_masses", [])) | set(inside))
    return col | ({"point_masses": merged} if merged else {})


def _numeric_exact(p: _Profile) -> dict:
    x, w = p.numbers, p.counts.to_numpy(np.float64)
    lower, upper = float(x.min()), float(x.max())
    col = {"name": p.name, "kind": "numeric", "lower": lower,
           "upper": upper if upper > lower else lower + 1.0, "integer": p.integer,
           "nullable": p.missing > 0}
    col |= _grid_shape(*_grid_counts(x, w), t=0.0, lower=lower)
    values = _value_counts(p)
    heavy = values[values >= POINT_MASS_SHARE * values.sum()]
    return _with_point_masses(col, list(heavy.index))


def _numeric_dp(p: _Profile, eps: float, delta: float,
                rng: np.random.Generator) -> dict | None:
    """Bounds from a Laplace histogram over the public doubling grid (plus a 'missing' cell)
    with eps_b = (1 - POINT_MASS_EPSILON) eps: one row changes two cells by one when replaced,
    so Laplace(2/eps_b) noise on every cell is eps_b-DP. The threshold keeps all empty cells below
    it with probability 1 - GRID_FAILURE, so bounds are not stretched by noise; cells with fewer
    rows than that are cut off (their rows then fall outside the bounds). Point masses from a
    stability histogram over the column's values with the rest of eps and `delta`
    (`_point_masses_dp`)."""
    eps_masses = POINT_MASS_EPSILON * eps
    eps = eps - eps_masses
    neg, zero, pos = _grid_counts(p.numbers, p.counts.to_numpy(np.float64))
    scale = 2.0 / eps
    n_cells = 2 * _CELLS + 2
    t = scale * math.log(n_cells / (2 * GRID_FAILURE))
    neg = neg + rng.laplace(0, scale, _CELLS)
    pos = pos + rng.laplace(0, scale, _CELLS)
    zero = zero + rng.laplace(0, scale)
    missing = p.missing + rng.laplace(0, scale)
    bounds = _grid_bounds(neg, zero, pos, t)
    if bounds is None:
        return None
    col = {"name": p.name, "kind": "numeric", "lower": bounds[0], "upper": bounds[1],
           "integer": p.integer, "nullable": bool(missing > t)}
    col |= _grid_shape(neg, zero, pos, t, bounds[0])
    # The grid's noisy total (unclipped, so unbiased) estimates the present rows for free.
    total = max(float(neg.sum() + zero + pos.sum()), 1.0)
    return _with_point_masses(col, _point_masses_dp(p, eps_masses, delta, total, rng))


def _point_masses_dp(p: _Profile, eps: float, delta: float, total: float,
                     rng: np.random.Generator) -> list[float]:
    """Values held by at least POINT_MASS_SHARE of `total` (a DP estimate of the present rows).
    Candidates must be found privately: the values of a numeric column are not public (a float
    held by one row is that person's value), so this is the stability-based histogram that
    `_categories_dp` uses for categories: Laplace(2/eps) on the count of every observed value,
    released only above 1 + (2/eps) ln(1/(2 delta)), which a value held by one row passes with
    probability at most delta; (eps, delta)-DP under replacement. The share test on the noisy
    counts is post-processing."""
    values = _value_counts(p)
    scale = 2.0 / eps
    t = 1.0 + scale * math.log(1.0 / (2.0 * delta))
    noisy = values.to_numpy() + rng.laplace(0, scale, len(values))
    keep = (noisy > t) & (noisy >= POINT_MASS_SHARE * total)
    return [float(v) for v in values.index[keep]]


def _categories_dp(p: _Profile, eps: float, delta: float,
                   rng: np.random.Generator) -> tuple[list[str], bool]:
    """Stability-based histogram: Laplace(2/eps) on the count of every *observed* value, kept
    only above 1 + (2/eps) ln(1/(2 delta)). A value held by one row survives with probability at
    most delta, which is what makes releasing data-dependent keys (eps, delta)-DP."""
    scale = 2.0 / eps
    t = 1.0 + scale * math.log(1.0 / (2.0 * delta))
    noisy = p.counts.to_numpy(np.float64) + rng.laplace(0, scale, len(p.counts))
    kept = [v for v, c in zip(p.counts.index, noisy) if c > t]
    nullable = p.missing + rng.laplace(0, scale) > t
    return _category_order(kept), bool(nullable)


def _boolean_dp(p: _Profile, eps: float, rng: np.random.Generator) -> bool:
    """Only nullability is data-derived for a boolean: one Laplace(1/eps) count of missing
    values (sensitivity 1), 'nullable' if it clears a threshold that noise alone passes with
    probability GRID_FAILURE."""
    scale = 1.0 / eps
    return bool(p.missing + rng.laplace(0, scale) > scale * math.log(1 / (2 * GRID_FAILURE)))


# -- the draft ------------------------------------------------------------------------------------


def draft_schema(df: pd.DataFrame, *, name: str, target: str | None = None,
                 epsilon: float | None = None, delta: float = 1e-6, seed: int | None = None,
                 csv: CsvOptions | None = None, site: str | None = None
                 ) -> tuple[Schema, list[str]]:
    """Return a schema for `df` and plain-language warnings about what must be reviewed.

    `site`: the study site whose rows `df` are, recorded in the provenance: in a federation that
    site's agent charges a DP draft's spend to its ledger (without it, every site does).

    `epsilon` switches to DP: it is split evenly over the modelled columns and composed
    basically; `delta` is split over the categorical ones (only the stability histogram needs
    it). `seed` makes the noise reproducible, for tests only: anyone who knows it can subtract the
    noise, so it is never recorded. `csv` is copied into the schema so that the file the draft
    came from reads back with it (header-less files: dropped columns must be the last ones).
    """
    if target is not None and target not in df.columns:
        raise ValueError(f"target {target!r} is not a column (columns: {list(df.columns)})")
    if epsilon is not None and not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError("epsilon must be a positive number")
    if epsilon is not None and not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    warnings: list[str] = []
    profiles = [_profile(str(c), df[c]) for c in df.columns]
    drop: list[str] = []
    for p in profiles:
        if epsilon is not None and p.why is not None:
            # A DP draft's warnings go into the schema file, which is public: no exact counts
            # (they would state the table's size), only which rule applied.
            p.why = _RULES[p.kind]
        if p.name == target and p.kind in ("numeric", "id"):
            looked = f"like an identifier: {p.why}" if p.kind == "id" else p.kind
            warnings.append(f"target {p.name!r} looked {looked}; drafted as categorical, since "
                            "a target is a class label. Check that this is the right column.")
            p.kind = "categorical"
        elif p.name == target and p.kind == "text":
            warnings.append(f"target {p.name!r} looks like free text ({p.why}); kept as "
                            "categorical since it is the target, but so many rare classes train "
                            "slowly and release poorly: coarsen it (map it to a public code list "
                            "or a few groups) and draft again.")
            p.kind = "categorical"
        elif p.name == target and p.kind == "empty":
            raise ValueError(f"target {p.name!r} has no values")
        if p.kind == "id":
            drop.append(p.name)
            warnings.append(f"column {p.name!r} looks like an identifier: {p.why}; listed under "
                            "'drop' (read for presence, never modelled).")
        elif p.kind == "text":
            drop.append(p.name)
            warnings.append(f"column {p.name!r} looks like free text: {p.why}. Listed under "
                            "'drop': as categories nearly every value would be its own, which "
                            "trains slowly and releases poorly. Keep it dropped, or coarsen it "
                            "first (map it to a public code list or a few groups) and draft "
                            "again.")
        elif p.kind == "empty":
            drop.append(p.name)
            warnings.append(f"column {p.name!r} is entirely missing: listed under 'drop'.")
    modelled = [p for p in profiles if p.name not in drop]
    if not modelled:
        raise ValueError("no column can be modelled (all are identifiers, free text or empty)")

    if epsilon is None:
        columns = [_column_exact(p, warnings) for p in modelled]
        provenance: list[dict] = [{"mechanism": EXACT_DRAFT, "columns": [p.name for p in modelled],
                                   "purpose": "categories, bounds and point masses read exactly"}]
        warnings.insert(0, _EXACT_WARNING.format(example=_example(modelled)))
    else:
        columns, provenance = _columns_dp(modelled, target, epsilon, delta, seed, drop, warnings)
        warnings.insert(2, _CHARGED_WARNING.format(
            where=f"site {site!r}" if site else "every site (no --site named the drafting one)"))
    draft_id = f"schema-draft/{secrets.token_hex(8)}"
    provenance = [{**p, "site": site, "draft_id": draft_id} for p in provenance]
    csv = csv or CsvOptions()
    if not csv.header:
        order = [str(c) for c in df.columns]
        if order[len(order) - len(drop):] != [c for c in order if c in drop]:
            raise ValueError(
                f"columns {drop} would be dropped, but in a file without a header the schema "
                "can only drop the last columns; add a header line or move them to the end")
    raw = {"name": name, "target": target, "columns": columns, "drop": drop,
           "csv": csv.model_dump(), "provenance": provenance}
    return Schema.from_dict(raw, origin=f"draft of {name}"), warnings


_EXACT_WARNING = (
    "NOT PRIVATE: the categories, bounds and point masses in this draft were read directly from "
    "the rows and are disclosive ({example}; every category listed proves that someone in the "
    "table has it). "
    "Review every value and replace it with public knowledge (a data dictionary, published "
    "ranges, official code lists) before sharing or using this schema, or redraft with --epsilon "
    "to derive them with differential privacy. The file is marked as an exact draft "
    f"(provenance {EXACT_DRAFT!r}) and every site that uses it warns until that entry is removed.")

_CHARGED_WARNING = (
    "In a federation the ledger of {where} is charged this spend when its agent first works on "
    "the study; draft once, since every draft read the rows.")

_DP_WARNING = (
    "Bounds, point masses and categories were derived with ({epsilon:g}, {delta:g})-differential "
    "privacy (split evenly over {n} columns, basic composition; a numeric column spends "
    "{masses:.0%} of its share on point masses, the rest on bounds). This spend is recorded in "
    "the schema's provenance and must be counted in each site's budget. Values too rare to "
    "release safely are left out on purpose: rows holding them will be rejected when loaded "
    "(load with drop mode, or widen bounds and add categories from public knowledge).")

_STRUCTURE_WARNING = (
    "Not covered by differential privacy: the column names, each column's kind, the integer "
    "flag of numeric columns, the spellings of boolean columns (their true/false) and which "
    "columns are identifiers or free text were read from the data exactly. Confirm them against "
    "public documentation of the table.")


def _boolean(p: _Profile, nullable: bool) -> dict:
    true, false = p.spellings
    return {"name": p.name, "kind": "boolean", "nullable": bool(nullable), "true": true,
            "false": false}


def _example(profiles: list[_Profile]) -> str:
    for p in profiles:
        if p.kind == "numeric":
            top = p.numbers.max()
            shown = int(top) if float(top).is_integer() else top
            return (f"the upper bound of {p.name!r}, {shown}, is the largest value of a real "
                    "person in the table")
    return "category lists show exactly which values occur"


def _column_exact(p: _Profile, warnings: list[str]) -> dict:
    if p.kind == "numeric":
        return _numeric_exact(p)
    if p.kind == "boolean":
        return _boolean(p, p.missing > 0)
    rare = [v for v, c in p.counts.items() if c < RARE]
    if rare:
        shown = ", ".join(repr(v) for v in rare[:3]) + (", ..." if len(rare) > 3 else "")
        some = f"{len(rare)} categories occur" if len(rare) > 1 else "1 category occurs"
        warnings.append(f"column {p.name!r}: {some} fewer than {RARE} times ({shown}); "
                        "listing them discloses that someone in the table has them.")
    return {"name": p.name, "kind": "categorical", "nullable": p.missing > 0,
            "categories": _category_order(list(p.counts.index))}


def _columns_dp(modelled: list[_Profile], target: str | None, epsilon: float, delta: float,
                seed: int | None, drop: list[str], warnings: list[str]
                ) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    eps = epsilon / len(modelled)
    cats = [p for p in modelled if p.kind == "categorical"]
    nums = [p for p in modelled if p.kind == "numeric"]
    # delta goes to the stability histograms only: categories and numeric point masses.
    delta_col = delta / (len(cats) + len(nums)) if cats or nums else 0.0
    columns = []
    for p in modelled:
        if p.kind == "numeric":
            col = _numeric_dp(p, eps, delta_col, rng)
        elif p.kind == "boolean":
            col = _boolean(p, _boolean_dp(p, eps, rng))
        else:
            kept, nullable = _categories_dp(p, eps, delta_col, rng)
            col = ({"name": p.name, "kind": "categorical", "nullable": nullable,
                    "categories": kept} if kept else None)
        if col is None:
            if p.name == target:
                raise ValueError(f"target {p.name!r}: no class is common enough to release at "
                                 f"epsilon {eps:g} per column; raise --epsilon or use public "
                                 "classes")
            drop.append(p.name)
            warnings.append(f"column {p.name!r}: nothing in it was common enough to release at "
                            f"epsilon {eps:g}; listed under 'drop' (give public bounds or "
                            "categories to model it).")
            continue
        columns.append(col)
    warnings.insert(0, _DP_WARNING.format(epsilon=epsilon, delta=delta if cats or nums else 0.0,
                                          n=len(modelled), masses=POINT_MASS_EPSILON))
    warnings.insert(1, _STRUCTURE_WARNING)
    # Every query is charged, also those of columns that were dropped for want of signal.
    provenance = []
    grid = [p for p in modelled if p.kind in ("numeric", "boolean")]
    if grid:
        provenance.append({"mechanism": "laplace-histogram",
                           "epsilon": sum(eps * (1 - POINT_MASS_EPSILON) if p.kind == "numeric"
                                          else eps for p in grid),
                           "delta": 0.0, "columns": [p.name for p in grid],
                           "purpose": "bounds of numeric columns, nullability of booleans"})
    if nums:
        provenance.append({"mechanism": "point-mass-histogram",
                           "epsilon": eps * POINT_MASS_EPSILON * len(nums),
                           "delta": delta_col * len(nums),
                           "columns": [p.name for p in nums],
                           "purpose": "stability histogram of numeric values: point masses"})
    if cats:
        provenance.append({"mechanism": "stability-histogram",
                           "epsilon": eps * len(cats), "delta": delta_col * len(cats),
                           "columns": [p.name for p in cats],
                           "purpose": "categories"})
    return columns, provenance
