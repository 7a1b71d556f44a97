"""The coordinator administrator's commands: `coordinator`, `sites`, `studies`, `train`,
`releases`, `audit`, `admins`, one module each (`coordinator` in coordinator_host.py), sharing
client.py.

Why everything but `coordinator init/serve-admin/add-*` goes through the gRPC admin API and never
opens the state database: the API is where authentication and the audit log live. A command that
wrote to the database directly would be an unlogged back door, and would not work from an
administrator's laptop anyway. The `coordinator` bootstrap commands are the exception by nature:
they create the credentials the API needs, so they run on the coordinator host and need the
state dir itself (which is the root of trust).
"""

from . import admins, audit, coordinator_host, releases, sites, studies, train
from .client import AdminClient
from .coordinator_host import app as coordinator_app
from .releases import RELEASE_FILES_NOTE, download_release
from .train import WatchLines

__all__ = ["APPS", "AdminClient", "RELEASE_FILES_NOTE", "WatchLines", "coordinator_app",
           "download_release"]

#: (name, app) pairs for synthpool/cli.py to register.
APPS = (("coordinator", coordinator_host.app), ("sites", sites.app), ("studies", studies.app),
        ("train", train.app), ("releases", releases.app), ("audit", audit.app),
        ("admins", admins.app))
