"""Fill each demo site's data volume with its own slice of the bundled UCI Adult rows.

Used only by the `demo` profile of deploy/docker-compose.yml:

    docker compose -f deploy/docker-compose.yml --profile demo run --rm demo-data

    python seed_demo_data.py [--rows N] [--force] DIR [DIR ...]

writes DIR/rows.csv.gz for every DIR: disjoint, contiguous slices of adult.data (header-less, the
format common/datasets/adult.yaml describes), N rows each (default: an equal share of all rows).
A DIR that already holds rows.csv.gz is left alone unless --force: a site's data is never
overwritten by accident. Real sites bring their own data and never run this.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
from pathlib import Path

from synthpool.common.bundled import ADULT_TRAIN, ATTRIBUTION

FILE_NAME = "rows.csv.gz"


def adult_lines() -> list[str]:
    with gzip.open(ADULT_TRAIN, "rt") as f:
        return [ln for ln in f if ln.strip() and not ln.startswith("|")]


def seed(dirs: list[Path], rows: int | None = None, force: bool = False) -> list[Path]:
    lines = adult_lines()
    per = rows or len(lines) // len(dirs)
    if per * len(dirs) > len(lines):
        raise SystemExit(f"only {len(lines)} Adult rows: cannot give {len(dirs)} sites {per} each")
    written = []
    for i, folder in enumerate(dirs):
        target = folder / FILE_NAME
        if target.exists() and not force:
            print(f"{target}: exists, left alone (--force overwrites)", file=sys.stderr)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with gzip.open(tmp, "wt") as g:
            g.writelines(lines[i * per:(i + 1) * per])
        os.chmod(tmp, 0o644)  # the agent reads it as its own unprivileged user
        os.replace(tmp, target)
        written.append(target)
        print(f"{target}: {per} rows", file=sys.stderr)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--rows", type=int, default=None, help="rows per site")
    parser.add_argument("--force", action="store_true", help="overwrite existing rows.csv.gz")
    args = parser.parse_args(argv)
    seed(args.dirs, args.rows, args.force)
    print(ATTRIBUTION, file=sys.stderr)


if __name__ == "__main__":
    main()
