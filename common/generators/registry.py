"""Where generator families are found: the `synthpool.generators` entry-point group.

synthpool's own families are declared there in its pyproject.toml like any other; a package
installed beside synthpool adds one by declaring

    [project.entry-points."synthpool.generators"]
    myfamily = "mypackage.module:MyGenerator"

and every command, site and coordinator on that machine can then use `family = "myfamily"`.
`register` adds a class in-process (tests, notebooks). A site refuses a study whose family it does
not have installed, before anything is charged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import entry_points

from pydantic import ValidationError

from . import DEFAULT_FAMILY  # noqa: F401  (re-exported: the registry's default)
from .base import Generator, Hyperparameters

ENTRY_POINT_GROUP = "synthpool.generators"

_registered: dict[str, type[Generator]] = {}


def register(cls: type[Generator]) -> type[Generator]:
    """Make `cls` available under `cls.family` in this process."""
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise TypeError(f"{cls!r} is not a synthpool Generator")
    _registered[cls.family] = cls
    return cls


def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def names() -> list[str]:
    return sorted(set(_registered) | set(_entry_points()))


def family(name: str) -> type[Generator]:
    if name in _registered:
        return _registered[name]
    ep = _entry_points().get(name)
    if ep is None:
        raise ValueError(f"unknown generator family {name!r}; installed: {names()}")
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Generator)) or cls.family != name:
        raise ValueError(f"entry point {name!r} ({ep.value}) is not a Generator named {name!r}")
    return cls


def hyperparameters(name: str, values: Mapping | str | None = None,
                    lr: float = 0.0) -> Hyperparameters:
    """The family's validated hyperparameters from a mapping (or its JSON, as the wire carries
    it); missing keys take the family's defaults; `lr` > 0 overrides the learning rate."""
    if isinstance(values, str):
        try:
            values = json.loads(values) if values.strip() else {}
        except json.JSONDecodeError as e:
            raise ValueError(f"model hyperparameters of {name!r} are not JSON: {e}") from None
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ValueError(f"model hyperparameters of {name!r} must be a mapping")
    if lr > 0:
        values["lr"] = lr
    try:
        return family(name).Hyperparameters(**values)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'value'}: {err['msg']}"
                             for err in e.errors())
        raise ValueError(f"model hyperparameters of {name!r}: {problems}") from None


def build(name: str, transformer, values: Hyperparameters | Mapping | str | None = None, *,
          lr: float = 0.0, seed: int = 0, device: str = "cpu") -> Generator:
    """A fresh generator of family `name` for the transformer's token layout."""
    if not isinstance(values, Hyperparameters) or lr > 0:
        values = hyperparameters(name, values if not isinstance(values, Hyperparameters)
                                 else values.model_dump(), lr)
    return family(name)(transformer, values, seed=seed, device=device)


def model_options(items: list[str]) -> dict:
    """`["hidden=128", "order=entropy"]` (a command line's KEY=VALUE settings) -> a mapping, each
    value read as a TOML literal when it is one (numbers, booleans), else as text; the family
    validates it."""
    import tomllib

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"model setting {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out
