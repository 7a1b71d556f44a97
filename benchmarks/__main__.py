"""Run benchmarks and write one markdown table per benchmark into benchmarks/results/.

    python -m benchmarks            # all
    python -m benchmarks engine     # one
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ALL = ["engine", "scale", "wide", "rounds", "generators", "empirical_privacy", "fedavg",
       "utility", "federation", "secure_aggregation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("names", nargs="*", default=ALL, help=f"any of {ALL}")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for name in args.names:
        module = importlib.import_module(f"benchmarks.{name}")
        started = time.time()
        table = module.run()
        path = RESULTS / f"{name}.md"
        path.write_text(f"# {name}\n\n{table}\n\n_{time.strftime('%Y-%m-%d %H:%M')}, "
                        f"{time.time() - started:.0f} s, {module.machine()}_\n")
        print(path.read_text())


if __name__ == "__main__":
    main()
