"""`synthpool`: the command line for data owners (schema, synth, evaluate), the demo, and the
coordinator's administrators. Each group lives in synthpool/commands; this module assembles them."""

from __future__ import annotations

import typer

from .commands import admin, demo, evaluate, families, release, schema, simulate, synth

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Federated, differentially private synthetic data.")
app.add_typer(schema.app, name="schema")
app.add_typer(release.app, name="release")
app.command("synth")(synth.synth)
app.command("evaluate")(evaluate.evaluate_command)
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)
app.command("families")(families.families)
for _name, _sub in admin.APPS:  # coordinator, sites, studies, train, releases, audit, admins
    app.add_typer(_sub, name=_name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
