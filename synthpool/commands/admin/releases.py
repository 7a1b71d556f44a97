"""`synthpool releases`: list, download and verify releases on the coordinator."""

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Optional

import typer
from synthpool.common.cli_paths import path_option

from synthpool.protos import admin_pb2 as pb

from .client import (AdminClient, api_command, command_group, fail, format_time, message_dict,
                     print_table, show)

app = command_group("List, download and verify releases on the coordinator.")


def download_release(client: AdminClient, name: str, out_dir: Path) -> Path:
    """Stream release `name` into `out_dir/name`, atomically (a partial download never has the
    final name). Paths from the server are checked: nothing is written outside the folder."""
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists():
        raise FileExistsError(f"{final} exists")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=out_dir))
    try:
        sizes: dict[str, int] = {}
        handle = None
        current = None
        for chunk in client.DownloadRelease(pb.DownloadReleaseRequest(name=name)):
            if chunk.path != current:
                if handle:
                    handle.close()
                target = tmp / _safe_relative(chunk.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = open(target, "wb")
                current = chunk.path
                sizes[current] = chunk.file_size
            handle.seek(chunk.offset)
            handle.write(chunk.data)
        if handle:
            handle.close()
        for rel, size in sizes.items():
            got = (tmp / rel).stat().st_size
            if got != size:
                raise IOError(f"{rel}: received {got} of {size} bytes")
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def _safe_relative(path: str) -> Path:
    p = PurePosixPath(path)
    if p.is_absolute() or not p.parts or any(part in ("..", "", ".") for part in p.parts):
        raise ValueError(f"the server sent an unsafe path {path!r}")
    return Path(*p.parts)


@api_command(app, "list")
def releases_list(client, as_json, study: str = typer.Option("", "--study")):
    """List releases (optionally of one study)."""
    r = client.ListReleases(pb.ListReleasesRequest(study=study))

    def human() -> None:
        print_table([[x.name, x.study or "-", format_time(x.created_at), str(x.files), str(x.bytes)]
                     for x in r.releases], ["NAME", "STUDY", "CREATED", "FILES", "BYTES"])
        if r.releases:
            print(RELEASE_FILES_NOTE)
    show(as_json, message_dict(r)["releases"], human)


def _files(n: int) -> str:
    return "the 1 file" if n == 1 else f"the {n} files"


def _match(n: int) -> str:
    return "matches its hash" if n == 1 else "match their hashes"


#: How `releases list` and `releases verify`/`download` count files, said by both.
RELEASE_FILES_NOTE = ("FILES counts every file of the release, manifest.json and manifest.sig "
                      "included; `releases verify` counts the files the signed manifest lists "
                      "(all but those two).")


@api_command(app, "download")
def releases_download(client, as_json,
                      name: str = typer.Argument(...),
                      out: Path = path_option(Path("."), "--out",
                                               help="Folder to download into (as OUT/NAME)."),
                      public_key: Optional[Path] = path_option(
                          None, "--public-key", exists=True, dir_okay=False,
                          help="Verify the download with the coordinator's release key.")):
    """Download a release; with --public-key, verify its signature and hashes locally."""
    try:
        folder = download_release(client, name, out)
    except (OSError, ValueError) as e:
        fail(as_json, "DOWNLOAD", str(e))
    data: dict = {"path": str(folder)}
    if public_key:
        from synthpool.common.signing import load_public_key, verify

        result = verify(folder, load_public_key(public_key))
        data["verification"] = {"ok": result.ok, "problems": result.problems,
                                "files_checked": result.files_checked}
    show(as_json, data, lambda: print(
        f"downloaded {name} to {folder}" + (
            "" if not public_key else
            f"; signature OK and {_files(data['verification']['files_checked'])} the "
            f"manifest lists {_match(data['verification']['files_checked'])} (manifest.json "
            "and manifest.sig not counted)"
            if data["verification"]["ok"] else
            "; VERIFICATION FAILED:\n  " + "\n  ".join(data["verification"]["problems"]))))
    if public_key and not data["verification"]["ok"]:
        raise typer.Exit(1)


@api_command(app, "verify")
def releases_verify(client, as_json, name: str = typer.Argument(...)):
    """Have the coordinator check a release's signature and hashes; exit 1 if they fail."""
    r = client.VerifyRelease(pb.VerifyReleaseRequest(name=name))
    show(as_json, message_dict(r), lambda: print(
        f"OK: signature valid; {_files(r.files_checked)} the signed manifest lists "
        f"{_match(r.files_checked)} (manifest.json and manifest.sig themselves not counted: `releases list` "
        f"shows {r.files_checked + 2})" if r.ok else
        "FAILED:\n  " + "\n  ".join(r.problems)))
    if not r.ok:
        raise typer.Exit(1)

