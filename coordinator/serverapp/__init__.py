"""The coordinator's Flower ServerApp: the process Flower starts for each training, on the
SuperLink's host. `app.py` is the entry point Flower loads; `study.py` runs a training."""
