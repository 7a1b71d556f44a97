"""Helpers shared by benchmarks: machine description, isolated runs for peak memory, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def isolated(module: str, func: str, **kwargs) -> dict:
    """Run `module.func(**kwargs)` in a fresh interpreter, so its peak RSS is its own."""
    code = (f"import json, resource, {module} as m; r = m.{func}(**json.loads({json.dumps(json.dumps(kwargs))})); "
            "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            "print('RESULT' + json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def median_range(values: list[float], fmt: str = ".3f") -> str:
    """A table cell for repeated runs: the median, and the range when there is more than one."""
    import statistics

    med = format(statistics.median(values), fmt)
    return med if len(values) == 1 else f"{med} ({min(values):{fmt}}-{max(values):{fmt}})"


def markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append("| " + " | ".join(f"{v:,.3g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(out)
