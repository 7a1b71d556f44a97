"""The committed generated code must be what protos/generate.py makes from the committed .proto.

Why: the coordinator and the site agents import the committed code, not the .proto; a field added
to the .proto without regenerating would silently not exist on the wire.

The version stamps grpc_tools writes (its own version and the protobuf runtime it targets) are
compared separately: a different grpcio-tools on a developer's machine is worth a clear message,
but the wire format is in the serialized descriptor, which must match byte for byte.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parent.parent / "protos"

_STAMPS = [
    re.compile(r"^# Protobuf Python Version: .*$", re.M),
    re.compile(r"^GRPC_GENERATED_VERSION = .*$", re.M),
    re.compile(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
               r"\d+,\s*\d+,\s*\d+,", re.S),
]


def _unstamped(text: str) -> str:
    for pattern in _STAMPS:
        text = pattern.sub("<version>", text)
    return text


def _generate_module():
    spec = importlib.util.spec_from_file_location("_synthpool_protos_generate", PROTOS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is not installed")
    generate = _generate_module()
    fresh = generate.generate(tmp_path)
    assert fresh, "nothing generated"
    stale, restamped = [], []
    for new in fresh:
        committed = PROTOS / new.name
        assert committed.exists(), f"{committed.name} is not committed: run python protos/generate.py"
        old_text, new_text = committed.read_text(), new.read_text()
        if old_text == new_text:
            continue
        if _unstamped(old_text) == _unstamped(new_text):
            restamped.append(new.name)
        else:
            stale.append(new.name)
    assert not stale, (f"{stale} differ from what protos/admin.proto generates: "
                       "run `python protos/generate.py` and commit the result")
    if restamped:
        from importlib.metadata import version

        pytest.skip(f"{restamped} match except for version stamps: this machine's grpcio-tools "
                    f"({version('grpcio-tools')}) differs from the one that "
                    "generated the committed code")


def test_generated_grpc_module_imports_package_relative():
    text = (PROTOS / "admin_pb2_grpc.py").read_text()
    assert "from synthpool.protos import admin_pb2 as admin__pb2" in text
    assert not re.search(r"^import admin_pb2", text, re.M)
    assert str(PROTOS) not in text and str(PROTOS) not in (PROTOS / "admin_pb2.py").read_text()


def test_generated_code_imports_from_a_clean_interpreter():
    import subprocess

    out = subprocess.run([sys.executable, "-c",
                          "from synthpool.protos import admin_pb2_grpc as g, admin_pb2 as p;"
                          "print(p.DESCRIPTOR.package, len(p.DESCRIPTOR.services_by_name['Admin'].methods))"],
                         capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["synthpool.admin.v1", "19"]
