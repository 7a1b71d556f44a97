"""The site's Flower ClientApp: one process per message from the coordinator, forked by the
site's executor (agent/host/trusted_exec.py). `app.py` is the pinned entry point; the jobs it
runs (statistics, a round of DP-SGD, SecAgg+, evaluation) and their noise plan are beside it.
It keeps nothing in memory between messages: the site's state dir holds it (agent/site_state.py)."""
