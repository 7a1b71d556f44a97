"""`synthpool studies`: create and inspect studies."""

from pathlib import Path
from typing import List, Optional

import typer
from synthpool.common.cli_paths import path_option

from synthpool.protos import admin_pb2 as pb

from .client import api_command, command_group, enum_name, message_dict, print_table, show

app = command_group("Create and inspect studies.")


_POPULATION = {"disjoint": pb.POPULATION_DISJOINT, "overlapping": pb.POPULATION_OVERLAPPING}


def _study_row(s) -> List[str]:
    p = s.privacy
    return [s.name, enum_name(pb.StudyStatus, s.status, "STUDY_STATUS_"),
            f"{p.epsilon:g}", f"{p.delta:g}", enum_name(pb.Population, p.population, "POPULATION_"),
            str(p.rounds), str(p.rows), f"{s.release_epsilon:g}"]


@api_command(app, "create")
def studies_create(client, as_json,
                   name: Optional[str] = typer.Argument(None, help="Default: the schema's name."),
                   schema: Path = path_option(..., "--schema", exists=True, dir_okay=False),
                   epsilon: float = typer.Option(..., "--epsilon", help="Budget per site."),
                   delta: float = typer.Option(..., "--delta", help="Per site."),
                   population: str = typer.Option("overlapping", "--population",
                                                  help="disjoint (a person is at one site only: "
                                                       "release epsilon = max) or overlapping "
                                                       "(sum; the safe default)."),
                   rounds: int = typer.Option(3, "--rounds", min=1),
                   rows: int = typer.Option(10000, "--rows", min=1,
                                            help="Synthetic rows to release."),
                   site: List[str] = typer.Option([], "--site",
                                                  help="A participating site (repeatable); "
                                                       "default: every approved site.")):
    """Create a study from a schema file and privacy settings."""
    import yaml

    if population not in _POPULATION:
        raise typer.BadParameter("disjoint or overlapping", param_hint="--population")
    text = schema.read_text()
    if name is None:
        try:
            name = (yaml.safe_load(text) or {}).get("name")
        except (yaml.YAMLError, AttributeError):
            name = None
        if not name:
            raise typer.BadParameter("give a study name (the schema has none)", param_hint="NAME")
    r = client.CreateStudy(pb.CreateStudyRequest(
        name=name, schema_yaml=text, sites=site,
        privacy=pb.PrivacySettings(epsilon=epsilon, delta=delta,
                                   population=_POPULATION[population], rounds=rounds, rows=rows)))
    data = message_dict(r)
    data.pop("schema_yaml", None)
    show(as_json, data, lambda: print(
        f"created study {r.name} (schema {r.schema_fingerprint}); release guarantee with the "
        f"current sites: epsilon {r.release_epsilon:g}, delta {r.release_delta:g}"))


@api_command(app, "list")
def studies_list(client, as_json):
    """List studies."""
    r = client.ListStudies(pb.ListStudiesRequest())
    show(as_json, [{k: v for k, v in d.items() if k != "schema_yaml"}
                   for d in message_dict(r)["studies"]], lambda: print_table(
        [_study_row(s) for s in r.studies],
        ["NAME", "STATUS", "EPSILON", "DELTA", "POPULATION", "ROUNDS", "ROWS", "RELEASE EPS"]))


@api_command(app, "get")
def studies_get(client, as_json,
                name: str = typer.Argument(...),
                schema_out: Optional[Path] = path_option(None, "--schema-out",
                                                          help="Write the study's schema here.")):
    """Show one study (and optionally save its schema)."""
    r = client.GetStudy(pb.GetStudyRequest(name=name))
    if schema_out:
        schema_out.write_text(r.schema_yaml)

    def human() -> None:
        print_table([_study_row(r)], ["NAME", "STATUS", "EPSILON", "DELTA", "POPULATION", "ROUNDS",
                                      "ROWS", "RELEASE EPS"])
        print(f"schema {r.schema_fingerprint}; sites: {', '.join(r.sites) or 'all approved'}")
        if r.HasField("latest_run"):
            print(f"latest run {r.latest_run.id}: "
                  f"{enum_name(pb.RunStatus, r.latest_run.status, 'RUN_STATUS_')} "
                  f"{r.latest_run.message}".rstrip())
    show(as_json, message_dict(r), human)

