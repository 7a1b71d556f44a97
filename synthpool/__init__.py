"""synthpool: federated, differentially private synthetic data.

The importable package maps the repository's folders: ``synthpool.common`` (shared by sites and
coordinator), ``synthpool.agent`` (runs at a site), ``synthpool.coordinator`` (runs at the
coordinator) and ``synthpool.protos`` (the wire format).
"""

__version__ = "0.1.0"
