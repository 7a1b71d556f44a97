"""Command groups of the `synthpool` CLI, one module per group."""
