"""Evaluation of a synthetic table against the real rows it was made from.

One module per job; import the one you need (nothing heavy is imported here):

- `encoding`: schema-driven numeric encoding (one-hot + public-bounds scaling) for models/distances
- `grids`: the public cells of every column; exact and DP histograms on them
- `fidelity`: column shapes and pair trends (SDMetrics-compatible), dependence, diagnostics
- `utility`: train-on-synthetic-test-on-real vs train-on-real, with curves
- `privacy`: distance to closest record, exact copies, two membership-inference attacks
- `empirical_privacy`: Triastcyn & Faltings' empirical privacy estimate (retrains the generator
  without some records; `synth --empirical-privacy`)
- `density_shift`: a density-ratio heuristic on one release (the attacks' `empirical_privacy` key)
- `neighbours`: the nearest-neighbour and kernel-density helpers those two share
- `site_scores`: the aggregates a site may return from its evaluation
- `pooled` / `federated_report`: the shared report of a federated release from the sites' returns
- `evaluate`: `evaluate(...) -> EvaluationResult`, plus the plain-language verdicts
- `report` / `plots`: report.json and the self-contained report.html
- `tables`: reading a table file into the evaluation's dtypes
"""
