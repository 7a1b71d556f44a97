"""The entry point Flower loads (deploy/app/pyproject.toml: `serverapp`). Nothing imports this
module: building the ServerApp is its only effect."""

from __future__ import annotations

from ...common import flower_backoff
from .study import run_study
from .run_config import RunConfig


def make_app(run: RunConfig | None = None):
    """The ServerApp. Deployment reads the RunConfig from the run config of `flwr run`; the
    simulation (synthpool/commands/simulate.py) passes its own."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        flower_backoff.shorten()  # the grid pulls the sites' replies sooner
        run_study(grid, run or RunConfig.from_run_config(dict(context.run_config)))

    return app


app = make_app()
