"""`synthpool audit`: read the coordinator's audit log."""

import typer

from synthpool.protos import admin_pb2 as pb

from .client import api_command, command_group, format_time, message_dict, print_table, show

app = command_group("Read the coordinator's audit log.")


@api_command(app, "list")
def audit_list(client, as_json,
               after: int = typer.Option(0, "--after", help="Entries after this id."),
               limit: int = typer.Option(100, "--limit")):
    """Show audit entries, oldest first."""
    r = client.ListAudit(pb.ListAuditRequest(after_id=after, limit=limit))
    show(as_json, message_dict(r)["entries"], lambda: print_table(
        [[str(e.id), format_time(e.at), e.actor, e.action, e.outcome, e.detail] for e in r.entries],
        ["ID", "AT", "ACTOR", "ACTION", "OUTCOME", "DETAIL"]))

