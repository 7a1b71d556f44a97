"""Turn evaluation results into plain JSON values (report.json must load anywhere)."""

from __future__ import annotations

import math

import numpy as np


def jsonable(obj):
    """dicts/lists/numbers/strings only; numpy scalars and arrays converted; NaN and inf become
    None, since JSON has neither."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj
