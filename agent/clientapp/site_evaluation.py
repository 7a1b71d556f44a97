"""What a site computes when the coordinator asks it to score a release.

The coordinator sends a synthetic sample (Parquet bytes, with its sha256 in the request). The site
scores it against its own rows (`common.evaluation.evaluate`: training rows, and the hold-out set
aside before any training, agent/site_state.py) and:

* keeps the FULL report (real distributions, association matrices, curves, distance quantiles) in
  its state dir, `reports/<study>/<training>/report.html`, for its own staff;
* returns only `site_scores` (aggregates; not DP, shared by the owner's choice in site.toml) and
  DP histograms of its training rows on the schema's public grid: ONE Gaussian mechanism, planned
  when the training was calibrated (its share of the budget reserved then, so training plus
  evaluation land on the study's target; agent/clientapp/noise_plan.py:plan_evaluation) and charged to the
  ledger before it runs.

The ClientApp (agent/clientapp/app.py) owns parsing, the write-ahead charge and the replay cache, as
for the other stages.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from ...common.privacy import GaussianMechanism
from ..site_state import SiteState, safe_file_name

MAX_SYNTHETIC_ROWS = 200_000  # a sample beyond this is a mistake or an attack on the site's CPU
# The footer's uncompressed size of the column pages: a compressed page can hide 300x its bytes.
MAX_PAGE_BYTES = 64 * 2**20


class BadSample(ValueError):
    """The synthetic sample sent to the site cannot be scored."""


def read_sample(site: SiteState, data: bytes) -> pd.DataFrame:
    """The sample as a frame, its size checked from the Parquet footer BEFORE anything is
    decoded: a few kilobytes of dictionary-encoded Parquet can decode to gigabytes."""
    import pyarrow.parquet as pq

    from ...common.evaluation.tables import conform

    names = list(site.schema.names)
    try:
        # Strings stay dictionary-encoded when read: one long value repeated costs its bytes once.
        parquet = pq.ParquetFile(io.BytesIO(data), read_dictionary=names)
        meta = parquet.metadata
        rows = meta.num_rows
        decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise BadSample(f"the synthetic sample is not a readable Parquet file ({type(e).__name__})") from None
    if not 0 < rows <= MAX_SYNTHETIC_ROWS:
        raise BadSample(f"the synthetic sample has {rows} rows; 1 to {MAX_SYNTHETIC_ROWS} expected")
    limit = max(MAX_PAGE_BYTES, 32 * rows * len(site.schema.names))
    if meta.num_columns > 4 * len(site.schema.names) or decoded > limit:
        raise BadSample(f"the synthetic sample would decode to {decoded} bytes in "
                        f"{meta.num_columns} columns; at most {limit} bytes in the study's "
                        f"{len(site.schema.names)} columns expected")
    missing = [c for c in names if c not in parquet.schema_arrow.names]
    if missing:
        raise BadSample(f"the synthetic sample lacks the study's columns {missing}")
    try:
        df = parquet.read(columns=names).to_pandas()
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a bad page
        raise BadSample(f"the synthetic sample's pages are unreadable ({type(e).__name__})") from None
    return conform(df, site.schema)


def run_evaluation(site: SiteState, cfg, synthetic: pd.DataFrame,
                   mechanism: GaussianMechanism | None, ledger: dict) -> dict:
    """Score `synthetic`; write the site's own report; return what may leave the site."""
    from ...common.evaluation.evaluate import evaluate
    from ...common.evaluation.grids import dp_histograms
    from ...common.evaluation.report import write_report
    from ...common.evaluation.site_scores import site_scores

    schema, train = site.schema, site.load_rows()
    privacy = {"epsilon": ledger["epsilon"], "delta": ledger["delta"],
               "per_site": {site.name: {"epsilon": ledger["epsilon"], "delta": ledger["delta"]}}}
    result = evaluate(schema, train, site.load_holdout(), synthetic, privacy=privacy, seed=cfg.seed)
    report_dir = site.state_dir / "reports" / safe_file_name(cfg.study) / safe_file_name(cfg.training_id)
    write_report(result, report_dir, title=f"{site.name}: evaluation of training {cfg.training_id} "
                                           "(this site's own copy: contains its real distributions)")
    histograms = None
    if mechanism is not None:
        # Noise from OS entropy (unseeded), like every DP mechanism at a site.
        histograms = dp_histograms(schema, train, mechanism.noise_multiplier,
                                   np.random.default_rng(), name=mechanism.name)
        if GaussianMechanism.from_dict(histograms["mechanism"]) != mechanism:
            raise RuntimeError("the evaluation histograms ran another mechanism than was charged")
    return {"scores": site_scores(result) if site.config.evaluation.share_scores else None,
            "histograms": histograms}
