"""Load a site's table and check every cell against the study schema before anything else sees it.

Everything downstream (transforms, DP-SGD, scoring) assumes values inside the schema's public
categories and bounds; a value outside them would either crash a transform deep inside training or,
worse, be silently clipped into a different person's bin. So problems are found here, reported with
file, row, line, column, value and what was expected, and never fixed quietly: the caller either
gets an error or, with ``on_invalid="drop"``, a report that counts every dropped row per column.

Design notes:

* CSV text is parsed by pyarrow (single-threaded, so it can number rows) with every column read as
  dictionary-encoded strings. Two reasons: its invalid-row handler catches rows with too few *and*
  too many fields (pandas silently pads short rows), and the dictionary gives each column's distinct
  values for free, so normalising and validating costs O(distinct values), not O(rows).
* Parquet and SQL values arrive typed; they are turned into the same (codes, distinct values) form
  and checked by the same code, so a table validates identically whatever it was stored in.
  The rules per column kind, and what a problem's message expects, are common/column_values.py's;
  the evaluation reads synthetic rows by the same rules, tolerantly.
* Violation objects are built only for the first `MAX_VIOLATIONS` bad rows; counts are exact.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from .column_values import (MISSING, OK, distinct_texts, expected, format_bound, native_bools,
                            numeric_problems, per_row, read_values)
from .schema import CsvOptions, NumericColumn, Schema

MAX_VIOLATIONS = 1000  # kept in reports and errors; counts are always complete
SHOWN_IN_ERROR = 20
SHAPE = "(wrong number of fields)"  # the per-column count key for rows of the wrong width
PARQUET_SUFFIXES = (".parquet", ".pq")
ByteProgress = Callable[[int, int], None]  # (bytes of the file read so far, file size)



# -- results and errors ------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One problem, located precisely enough to find it in an editor (row and physical line)."""

    file: str
    row: int | None
    line: int | None
    column: str | None
    value: str | None
    expected: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}" + (f" (line {self.line})" if self.line else "")
        elif self.line is not None:
            where += f", line {self.line}"
        if self.column is not None:
            where += f", column {self.column!r}"
        if self.row is None:  # a whole-table problem: nothing was "got"
            return f"{where}: expected {self.expected}"
        got = "a missing value" if self.value is None else repr(self.value)
        return f"{where}: got {got}, expected {self.expected}"


def _count_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


class DataError(ValueError):
    """The data (not the schema) is wrong or unreadable; says where and why."""

    def __init__(self, source: str, violations: list[Violation] | None = None, *,
                 reason: str | None = None, counts: dict[str, int] | None = None,
                 bad_rows: int | None = None):
        self.source = source
        self.violations = list(violations or [])
        self.reason = reason
        self.counts = dict(counts or {})
        self.bad_rows = bad_rows
        if reason is not None:
            lines = [f"{source}: {reason}"] + [f"  {v}" for v in self.violations[:SHOWN_IN_ERROR]]
        else:
            n = bad_rows if bad_rows is not None else len(self.violations)
            lines = [f"{source}: {n} invalid row{'s' * (n != 1)} ({_count_text(self.counts)})"]
            lines += [f"  {v}" for v in self.violations[:SHOWN_IN_ERROR]]
            total = sum(self.counts.values()) or len(self.violations)
            if total > SHOWN_IN_ERROR:
                lines.append(f"  ... and {total - SHOWN_IN_ERROR} more problems")
        super().__init__("\n".join(lines))

    def __reduce__(self):  # keyword state survives pickling (errors cross process boundaries)
        return (_rebuild_data_error, (self.source, self.violations, self.reason, self.counts,
                                      self.bad_rows))


def _rebuild_data_error(source, violations, reason, counts, bad_rows) -> DataError:
    return DataError(source, violations, reason=reason, counts=counts, bad_rows=bad_rows)


@dataclass
class LoadReport:
    source: str
    rows_read: int
    rows_kept: int
    dropped_by_column: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)  # the first MAX_VIOLATIONS
    # The schema's columns in the order the source holds them (a release writes them so).
    columns: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"read {self.rows_read} rows from {self.source}; "
        dropped = self.rows_read - self.rows_kept
        if not dropped:
            return text + "all rows valid"
        return text + f"dropped {dropped} invalid rows ({_count_text(self.dropped_by_column)})"


# -- entry points --------------------------------------------------------------------------------


def load_table(source: str | Path, schema: Schema, *, query: str | None = None,
               on_invalid: Literal["error", "drop"] = "error",
               progress: ByteProgress | None = None) -> tuple[pd.DataFrame, LoadReport]:
    """Read `source` and return the schema's columns, validated, in the form transforms expect:
    numeric float64 (NaN = missing), categorical and boolean as object (str / bool, NaN = missing).

    Bad cells raise `DataError` (or, with ``on_invalid="drop"``, drop their rows and say so in the
    report). Problems no row-drop can fix (unreadable or empty source, missing or unexpected
    columns) always raise. The schema's missing markers describe text files; in Parquet and SQL
    only NULL is missing, since a stored '' or '?' there was put in on purpose.
    `progress` hears how far the parse of a CSV file has read (parsing is most of the time).
    """
    if on_invalid not in ("error", "drop"):
        raise ValueError(f"on_invalid must be 'error' or 'drop', not {on_invalid!r}")
    raw = _read(source, query=query, csv=schema.csv, names=schema.source_columns,
                only=schema.names, progress=progress)
    _check_columns(raw, schema)
    _require_rows(raw)
    return _validate(raw, schema, on_invalid)


def read_unchecked(source: str | Path, schema: Schema, *, query: str | None = None
                   ) -> pd.DataFrame:
    """The schema's columns of `source`, read as `load_table` reads them (the same readers, csv
    options, value normalisation and missing markers) with no cell refused: text cells come back
    normalised (NaN where missing), typed numbers and booleans as stored. For synthetic rows,
    whose values outside the schema the evaluation counts rather than refuses
    (common/evaluation/tables.py turns them into its dtypes). An unreadable source, a missing
    column or a row of the wrong width still raises: a table misread would be scored wrongly."""
    raw = _read(source, query=query, csv=schema.csv, names=schema.source_columns,
                only=schema.names)
    missing = [c for c in schema.names if c not in raw.columns]
    if missing:
        raise DataError(raw.display, reason=f"the table lacks columns {missing}")
    if raw.shape_problems:
        raise DataError(raw.display, raw.shape_violations()[:MAX_VIOLATIONS],
                        reason=f"{len(raw.shape_problems)} rows have the wrong number of fields")
    out = {}
    for name in schema.names:
        s = raw.frame[name]
        if not raw.text and (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            out[name] = s.reset_index(drop=True)
            continue
        codes, uniq, missing_cells = _normalised_cells(s, schema, raw)
        out[name] = per_row(np.where(missing_cells, np.nan, uniq).astype(object), codes, np.nan)
    return pd.DataFrame(out, columns=schema.names)


def read_raw(source: str | Path, *, query: str | None = None, header: bool = True,
             separator: str = ",", missing: list[str] | tuple[str, ...] = ("",),
             comment: str | None = None) -> pd.DataFrame:
    """Read a table with no schema yet (to draft one): text cells stripped, `missing` markers
    turned into NaN, header-less columns named col0, col1, ...; Parquet/SQL values as stored.
    Rows of the wrong width still raise, since a draft from a misparsed file would be wrong."""
    csv = CsvOptions(header=header, separator=separator, missing=list(missing), comment=comment)
    raw = _read(source, query=query, csv=csv, names=None)
    _require_rows(raw)
    if raw.shape_problems:
        raise DataError(raw.display, raw.shape_violations()[:MAX_VIOLATIONS],
                        reason=f"{len(raw.shape_problems)} rows have the wrong number of fields")
    if not raw.text:
        return raw.frame.reset_index(drop=True)
    markers = {m.strip() for m in csv.missing}
    out = {}
    for name in raw.frame.columns:
        codes, uniq = _text_cells(raw.frame[name], strip=True, suffixes=())
        keep = ~np.isin(uniq, list(markers))
        out[name] = per_row(np.where(keep, uniq, np.nan).astype(object), codes, np.nan)
    return pd.DataFrame(out)


# -- reading ------------------------------------------------------------------------------------


@dataclass
class _Raw:
    """What a reader found, before any validation. For CSV, `frame` columns are pandas
    Categoricals of the cells' text; `numbers` are pyarrow's row numbers, used for row/line."""

    display: str
    frame: pd.DataFrame
    text: bool
    columns: list[str] = field(default_factory=list)  # all columns found, even unconverted ones
    header_line: int | None = None
    csv_path: Path | None = None
    skip_rows: int = 0
    numbers: np.ndarray | None = None         # pyarrow row number of each frame row
    record_numbers: np.ndarray | None = None  # pyarrow numbers of all data records, in order
    shape_problems: list[tuple[int | None, int, int, str]] = field(default_factory=list)

    def rows_of(self, idx: np.ndarray) -> np.ndarray:
        """1-based data-row numbers of frame rows `idx` (records, not counting header/blanks)."""
        if self.numbers is None:
            return idx + 1
        return np.searchsorted(self.record_numbers, self.numbers[idx]) + 1

    def lines_of(self, numbers: list[int | None]) -> list[int | None]:
        """Physical line of each pyarrow row number: pyarrow counts skipped leading lines, then
        only non-empty ones, so interior blank lines are found by scanning, only when needed."""
        if self.csv_path is None or not numbers or all(n is None for n in numbers):
            return [None] * len(numbers)
        wanted = max(n for n in numbers if n is not None)
        physical = list(range(0, self.skip_rows + 1))  # number -> line for the skipped region
        try:
            with _open_text(self.csv_path) as f:
                for lineno, line in enumerate(f, start=1):
                    if lineno <= self.skip_rows:
                        continue
                    if line.rstrip(b"\r\n"):
                        physical.append(lineno)
                        if len(physical) > wanted:
                            break
        except (OSError, EOFError):
            return [None] * len(numbers)
        return [physical[n] if n is not None and n < len(physical) else None for n in numbers]

    def shape_violations(self) -> list[Violation]:
        nums = [p[0] for p in self.shape_problems[:MAX_VIOLATIONS]]
        lines = self.lines_of(nums)
        out = []
        for (num, actual, expected, text), line in zip(self.shape_problems, lines):
            row = None
            if num is not None and self.record_numbers is not None:
                row = int(np.searchsorted(self.record_numbers, num)) + 1
            shown = text if len(text) <= 80 else text[:77] + "..."
            out.append(Violation(self.display, row, line, None, shown,
                                 f"{expected} fields, found {actual}"))
        return out


def _display(source: str | Path) -> str:
    s = str(source)
    if "://" in s:
        import sqlalchemy

        try:
            return sqlalchemy.make_url(s).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - an unparsable URL is reported later, by _read_sql
            return s.split("://", 1)[0] + "://..."
    return s


def _read(source: str | Path, *, query: str | None, csv: CsvOptions,
          names: list[str] | None, only: list[str] | None = None,
          progress: ByteProgress | None = None) -> _Raw:
    """Read any source; `only` limits which CSV columns are converted (dropped identifiers are
    often unique strings, the costliest thing to convert, and are never looked at)."""
    display = _display(source)
    s = str(source)
    if "://" in s:
        if query is None:
            raise DataError(display, reason="a database URL needs a query (--query / query=) "
                                            "that selects the table's columns")
        raw = _read_sql(s, query, display)
    elif query is not None:
        raise DataError(display, reason="a query is only meaningful with a database URL")
    elif s.lower().endswith(PARQUET_SUFFIXES):
        raw = _read_parquet(Path(s).expanduser(), display)
    else:
        raw = _read_csv(Path(s).expanduser(), csv, None if csv.header else names, display, only,
                        progress)
    return raw


def _require_rows(raw: _Raw) -> None:
    if len(raw.frame) == 0 and not raw.shape_problems:
        where = " below the header" if raw.header_line else ""
        raise DataError(raw.display, reason=f"no data rows{where}")


def _open_text(path: Path):
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


class _CountedRead:
    """A file for pyarrow's parser that tells `progress` how much of the file on disk it has
    read (compressed bytes for .gz, so the total is the file's size)."""

    def __init__(self, path: Path, progress: ByteProgress):
        self._disk = open(path, "rb")
        self._text = gzip.GzipFile(fileobj=self._disk) if str(path).lower().endswith(".gz") \
            else self._disk
        self._size, self._progress = path.stat().st_size, progress

    def read(self, n: int = -1) -> bytes:
        data = self._text.read(n)
        self._progress(self._disk.tell(), self._size)
        return data

    def __getattr__(self, name):  # closed, readable, ...: the text stream's
        return getattr(self._text, name)

    def close(self) -> None:
        self._text.close()
        self._disk.close()


def _leading_lines(path: Path, comment: str | None, display: str) -> tuple[int, bytes]:
    """Count leading blank/comment lines (Adult's test file opens with '|1x3 Cross validator')
    and return the first real line, so pyarrow can skip exactly those."""
    marker = comment.encode() if comment else None
    try:
        with _open_text(path) as f:
            for skipped, line in enumerate(f):
                body = line.strip()
                if body and not (marker and body.startswith(marker)):
                    return skipped, line
    except IsADirectoryError:
        raise DataError(display, reason="cannot read: it is a directory") from None
    except OSError as e:  # missing, permission, bad gzip (BadGzipFile is an OSError)
        raise DataError(display, reason=f"cannot read: {e.strerror or e}") from e
    except EOFError as e:
        raise DataError(display, reason=f"cannot read: truncated compressed file ({e})") from e
    raise DataError(display, reason="the file is empty (no header and no data rows)")


def _parse_line(line: bytes, sep: str, display: str) -> list[str]:
    try:
        table = pacsv.read_csv(io.BytesIO(line), read_options=pacsv.ReadOptions(
            autogenerate_column_names=True), parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    except pa.ArrowException as e:
        raise DataError(display, reason=f"cannot parse the first line: {e}") from e
    return [str(v).strip() for v in table.to_pylist()[0].values()] if table.num_rows else []


def _names_line(line: bytes, sep: str, display: str) -> list[str] | None:
    try:
        return _parse_line(line, sep, display)
    except DataError:  # an unparsable first line is reported with the data, as before
        return None


def _read_csv(path: Path, opts: CsvOptions, names: list[str] | None, display: str,
              only: list[str] | None = None, progress: ByteProgress | None = None) -> _Raw:
    sep = opts.separator
    if len(sep) != 1:
        raise DataError(display, reason=f"separator {sep!r} must be a single character")
    skip, first = _leading_lines(path, opts.comment, display)
    header_line = None
    if opts.header:
        names = _parse_line(first, sep, display)
        header_line = skip + 1
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DataError(display, reason=f"the header repeats column names: {dup}")
    elif names is None:  # raw read: width from the first line
        names = [f"col{i}" for i in range(len(_parse_line(first, sep, display)))]
    elif _names_line(first, sep, display) == list(names):
        # A header-less study's release still names its columns on its first line (table_io):
        # a line that is exactly the schema's column names is that header, not a row.
        header_line = skip + 1
    skip_rows = skip + (1 if header_line is not None else 0)

    ignored: list[int | None] = []
    shape: list[tuple[int | None, int, int, str]] = []
    comment = opts.comment

    def on_bad_row(row) -> str:
        text = row.text.strip()
        if not text or (comment and text.startswith(comment)):
            ignored.append(row.number)
        else:
            shape.append((row.number, row.actual_columns, row.expected_columns, row.text))
        return "skip"

    text_type = pa.dictionary(pa.int32(), pa.string())
    convert = [n for n in names if only is None or n in only]
    if opts.comment and names and names[0] not in convert:
        convert.insert(0, names[0])  # needed below to spot comment lines that parsed as data
    source = _CountedRead(path, progress) if progress is not None else path
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(skip_rows=skip_rows, column_names=names,
                                           use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=sep, invalid_row_handler=on_bad_row),
            convert_options=pacsv.ConvertOptions(
                column_types={n: text_type for n in names}, strings_can_be_null=False,
                quoted_strings_can_be_null=False, include_columns=convert))
    except (pa.ArrowException, OSError, EOFError) as e:
        reason = str(e)
        if "UTF8" in reason or "utf8" in reason.lower():
            reason = "not UTF-8 text"
        raise DataError(display, reason=f"cannot parse as CSV: {reason}") from e
    finally:
        if progress is not None:
            source.close()
    frame = table.to_pandas()
    numbers = None
    records = None
    if all(n is not None for n in ignored) and all(p[0] is not None for p in shape):
        skipped = np.array(sorted(ignored + [p[0] for p in shape]), dtype=np.int64)
        total = len(frame) + len(skipped)
        every = np.arange(skip_rows + 1, skip_rows + 1 + total, dtype=np.int64)
        numbers = np.setdiff1d(every, skipped, assume_unique=True)
        records = np.setdiff1d(every, np.array(ignored, dtype=np.int64), assume_unique=True)
        if len(numbers) != len(frame):
            numbers = records = None
    if comment and len(frame) and names:
        # A comment line that happens to have the right number of fields parsed as data.
        first_col = frame[names[0]]
        cats = first_col.cat.categories.astype(str)
        is_comment = cats.str.lstrip().str.startswith(comment)
        if is_comment.any():
            rows = np.isin(first_col.cat.codes.to_numpy(), np.flatnonzero(is_comment))
            if numbers is not None:
                records = np.setdiff1d(records, numbers[rows], assume_unique=True)
                numbers = numbers[~rows]
            frame = frame[~rows].reset_index(drop=True)
    return _Raw(display, frame, text=True, columns=list(names), header_line=header_line,
                csv_path=path,
                skip_rows=skip_rows, numbers=numbers, record_numbers=records,
                shape_problems=shape)


def _read_parquet(path: Path, display: str) -> _Raw:
    try:
        frame = pd.read_parquet(path)
    except IsADirectoryError:
        raise DataError(display, reason="cannot read: it is a directory") from None
    except OSError as e:
        raise DataError(display, reason=f"cannot read: {e.strerror or e}") from e
    except (pa.ArrowException, ValueError) as e:
        raise DataError(display, reason=f"not a readable Parquet file: {e}") from e
    return _Raw(display, frame.reset_index(drop=True), text=False,
                columns=[str(c) for c in frame.columns])


def _read_sql(url: str, query: str, display: str) -> _Raw:
    import sqlalchemy
    from sqlalchemy.exc import SQLAlchemyError

    try:
        parsed = sqlalchemy.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            # SQLite would silently create an empty database for a mistyped path.
            if not Path(parsed.database).is_file():
                raise DataError(display, reason=f"database file {parsed.database} does not exist")
        engine = sqlalchemy.create_engine(parsed)
    except DataError:
        raise
    except (SQLAlchemyError, ImportError, ValueError) as e:
        raise DataError(display, reason=f"cannot open database: {e}") from e
    try:
        with engine.connect() as conn:
            frame = pd.read_sql_query(sqlalchemy.text(query), conn)
    except (SQLAlchemyError, pd.errors.DatabaseError) as e:
        # pandas 3 wraps the driver's error in its own DatabaseError; name the driver's words.
        cause = e.__cause__ if isinstance(e.__cause__, SQLAlchemyError) else e
        detail = getattr(cause, "orig", None) or cause
        raise DataError(display, reason=f"query failed: {detail}") from e
    finally:
        engine.dispose()
    return _Raw(display, frame, text=False, columns=[str(c) for c in frame.columns])


# -- column checks --------------------------------------------------------------------------------


def _check_columns(raw: _Raw, schema: Schema) -> None:
    """Missing or unexpected columns: structural, so they raise even in drop mode."""
    found = raw.columns
    wanted = schema.names + schema.drop
    missing = [c for c in wanted if c not in found]
    extra = [c for c in found if c not in wanted]
    if not missing and not extra:
        return
    shown = ", ".join(found) if len(found) <= 30 else ", ".join(found[:30]) + ", ..."
    problems = [Violation(raw.display, None, raw.header_line, c, None,
                          f"a column named {c!r} (columns found: {shown})") for c in missing]
    problems += [Violation(raw.display, None, raw.header_line, c, None,
                           f"no column {c!r}: it is neither modelled nor listed in the schema's "
                           "drop") for c in extra]
    parts = []
    if missing:
        parts.append(f"missing column{'s' * (len(missing) > 1)} {missing}")
    if extra:
        parts.append(f"unexpected column{'s' * (len(extra) > 1)} {extra}")
    raise DataError(raw.display, problems, reason="; ".join(parts) + f" (found: {shown})")


def _text_cells(s: pd.Series, *, strip: bool, suffixes: tuple[str, ...] | list[str]
                ) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct normalised strings) for a column; code -1 = no value (NULL/NaN)."""
    codes, uniq = distinct_texts(s)
    if len(uniq):
        u = pd.Series(uniq, dtype=object)
        if strip:
            u = u.str.strip()
        if suffixes:
            for suffix in suffixes:  # one suffix at most: '<=50K.' -> '<=50K'
                hit = u.str.endswith(suffix) & (u.str.len() > len(suffix))
                u = u.where(~hit, u.str.slice(0, -len(suffix)))
                if strip:
                    u = u.str.strip()
        uniq = u.to_numpy(dtype=object)
    return np.asarray(codes, dtype=np.int64), uniq


@dataclass
class _Checked:
    values: np.ndarray       # the column as it goes out
    problems: np.ndarray     # int8 per row
    shown: callable          # row index -> the offending value as text (None = missing)


def _check(s: pd.Series, col, schema: Schema, raw: _Raw) -> _Checked:
    """One column against its kind's rules (common/column_values.py)."""
    missing_problem = OK if col.nullable else MISSING
    if (isinstance(col, NumericColumn) and not raw.text and pd.api.types.is_numeric_dtype(s)
            and not pd.api.types.is_bool_dtype(s)):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        nan = np.isnan(x)
        problems = numeric_problems(x, col)
        problems[nan] = missing_problem
        return _Checked(x, problems, lambda i: None if nan[i] else format_bound(x[i]))

    codes, uniq, missing = _normalised_cells(s, schema, raw)
    values, problems = read_values(col, uniq, None if raw.text else native_bools(s))
    values[missing] = np.nan
    problems[missing] = missing_problem
    row_problems = per_row(problems, codes, missing_problem)
    row_values = per_row(values, codes, np.nan)

    def shown(i: int) -> str | None:
        c = codes[i]
        return None if c < 0 or missing[c] else str(uniq[c])

    return _Checked(row_values, row_problems, shown)


def _normalised_cells(s: pd.Series, schema: Schema, raw: _Raw
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, distinct values normalised as the schema says, which of them are missing) of one
    column. The schema's missing markers describe text files; in Parquet and SQL only NULL is."""
    codes, uniq = _text_cells(s, strip=schema.normalize.strip,
                              suffixes=schema.normalize.strip_suffix)
    if raw.text:
        if schema.csv.skip_initial_space and not schema.normalize.strip:
            uniq = np.array([u.lstrip(" ") for u in uniq], dtype=object)
        missing = np.isin(uniq, [m.strip() for m in schema.csv.missing])
    else:
        missing = np.zeros(len(uniq), dtype=bool)
    return codes, uniq, missing


def _validate(raw: _Raw, schema: Schema, on_invalid: str) -> tuple[pd.DataFrame, LoadReport]:
    checked = {c.name: _check(raw.frame[c.name], c, schema, raw) for c in schema.columns}
    n = len(raw.frame)
    bad = np.zeros(n, dtype=bool)
    counts: dict[str, int] = {}
    if raw.shape_problems:
        counts[SHAPE] = len(raw.shape_problems)
    for name, ch in checked.items():
        hits = ch.problems != OK
        if hits.any():
            counts[name] = int(hits.sum())
            bad |= hits
    rows_read = n + len(raw.shape_problems)
    n_bad = int(bad.sum()) + len(raw.shape_problems)
    violations = _violations(raw, schema, checked, bad) if n_bad else []

    if n_bad and on_invalid == "error":
        raise DataError(raw.display, violations, counts=counts, bad_rows=n_bad)
    if n_bad == rows_read:
        raise DataError(raw.display, violations, reason="no valid rows: every row has a problem",
                        counts=counts)
    keep = ~bad
    columns = {}
    for c in schema.columns:
        values = checked[c.name].values[keep] if n_bad else checked[c.name].values
        # A Series of explicit dtype: pandas would infer its string dtype from an object array.
        columns[c.name] = pd.Series(values, dtype=np.float64 if isinstance(c, NumericColumn)
                                    else object, copy=False)
    # copy=False: each column stays its own array. Consolidating them into blocks and then
    # retyping column by column copied the table several times over (1.1 GB per million rows).
    out = pd.DataFrame(columns, copy=False)
    order = [c for c in raw.columns if c in checked]
    report = LoadReport(raw.display, rows_read, len(out), counts, violations,
                        order if sorted(order) == sorted(checked) else list(checked))
    return out, report


def _violations(raw: _Raw, schema: Schema, checked: dict[str, _Checked],
                bad: np.ndarray) -> list[Violation]:
    """Violation objects for the first MAX_VIOLATIONS bad rows only (sorted by row)."""
    idx = np.flatnonzero(bad)[:MAX_VIOLATIONS]
    rows = raw.rows_of(idx)
    numbers = [int(raw.numbers[i]) for i in idx] if raw.numbers is not None else [None] * len(idx)
    lines = raw.lines_of(numbers)
    cell: list[Violation] = []
    for i, row, line in zip(idx, rows, lines):
        for c in schema.columns:
            p = checked[c.name].problems[i]
            if p != OK:
                cell.append(Violation(raw.display, int(row), line, c.name,
                                      checked[c.name].shown(i), expected(c, p, schema.target)))
    merged = cell + raw.shape_violations()
    merged.sort(key=lambda v: (v.row is None, v.row or 0))
    return merged[:MAX_VIOLATIONS]
