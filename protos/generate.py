"""Regenerate the Python code for our .proto files: `python protos/generate.py`.

Why the generated code is committed rather than built at install time: the coordinator and the
site agents must speak the same wire format, and installing grpcio-tools (a compiler) on a
hospital server just to import the package is a burden. Committed code needs a guard against
drifting from the .proto; tests/test_protos_fresh.py regenerates into a temp dir with `generate`
and compares.

Two fix-ups make the output reproducible and importable:
- protoc runs on the file name relative to this folder, so no absolute path of the machine that
  generated it ends up in the code;
- grpc_tools writes `import admin_pb2 as admin__pb2`, which only works with protos/ on sys.path;
  we rewrite it to the package-relative `from synthpool.protos import admin_pb2 as admin__pb2`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("admin.proto",)
PACKAGE = "synthpool.protos"


def generate(out_dir: Path = HERE, proto_dir: Path = HERE) -> list[Path]:
    """Compile every proto in PROTOS from `proto_dir` into `out_dir`; return the written files."""
    import grpc_tools
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    written: list[Path] = []
    for proto in PROTOS:
        args = ["grpc_tools.protoc", f"-I{proto_dir}", f"-I{well_known}",
                f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", proto]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {proto_dir / proto}")
        stem = proto.removesuffix(".proto")
        grpc_file = out_dir / f"{stem}_pb2_grpc.py"
        text = grpc_file.read_text()
        fixed = re.sub(rf"^import {stem}_pb2 as ", f"from {PACKAGE} import {stem}_pb2 as ", text,
                       flags=re.MULTILINE)
        if fixed == text:
            raise RuntimeError(f"{grpc_file}: the expected `import {stem}_pb2` line is missing; "
                               "has grpc_tools changed its output?")
        grpc_file.write_text(fixed)
        written += [out_dir / f"{stem}_pb2.py", grpc_file]
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
