"""Walking what a site sent back (JSON trees): for tests that assert no row left a site."""

from __future__ import annotations


def list_lengths(tree):
    """The length of every list in `tree` (0 for a tree without lists)."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from list_lengths(v)
    elif isinstance(tree, list):
        yield len(tree)
        for v in tree:
            yield from list_lengths(v)
    else:
        yield 0


def numbers(tree):
    """Every number in `tree`, including numbers written inside strings."""
    if isinstance(tree, dict):
        for v in tree.values():
            yield from numbers(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from numbers(v)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield float(tree)
    elif isinstance(tree, str):
        for token in tree.replace(",", " ").split():
            try:
                yield float(token)
            except ValueError:
                pass
