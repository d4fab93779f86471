"""The package ``tvmc compile`` writes and ``tvmc run`` / ``tvmc inspect`` read.

A package is an (uncompressed) tar::

    manifest.json          versions, hardware config, MP-MRF parameters, inputs/outputs, per-call
                           workloads, schedules and programs, the offload report, and the SHA-256 of
                           every other member
    lib/model.so           the compiled host library (TVM export_library)
    programs/call_NNN.bin  each offloaded call's Energon program (the same bytes the library carries)

Loading is defensive: only regular files with expected names are extracted (no absolute paths, no
``..``, no links or devices), each member and the whole archive have size limits, and every member's
hash must match the manifest before anything is used.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .errors import PackageError

FORMAT = "energon-tvm-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "lib/model.so"
MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_MEMBERS = 10_000
_ALLOWED = re.compile(r"^(manifest\.json|lib/model\.so|programs/call_\d{3,6}\.bin)$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Package:
    """A package in memory: the manifest and the member files' bytes (the library as a path once
    extracted, see :func:`load_package`)."""

    manifest: dict
    programs: dict[str, bytes] = field(default_factory=dict)  # member name -> bytes
    library_path: Path | None = None

    @property
    def calls(self) -> list[dict]:
        return self.manifest["calls"]

    def program(self, call: dict) -> bytes:
        return self.programs[call["program"]]


def write_package(path: Path, manifest: dict, library: bytes, programs: dict[str, bytes]) -> None:
    """Write a package; the manifest gets the hashes of the library and the programs."""
    members = {LIBRARY: library, **programs}
    for name in members:
        if not _ALLOWED.match(name):
            raise PackageError(f"internal error: member name {name!r} is not a package member name")
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    files={name: sha256(data) for name, data in sorted(members.items())})
    members[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in [MANIFEST, LIBRARY, *sorted(programs)]:
            data = members[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(path)


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member's bytes, refusing anything that is not a plainly named regular file."""
    try:
        tar = tarfile.open(path, "r:")
    except FileNotFoundError:
        raise PackageError(f"package {str(path)!r} does not exist") from None
    except (tarfile.TarError, OSError, EOFError) as err:
        raise PackageError(f"{path} is not a package (not a readable tar archive: {str(err).splitlines()[0]})"
                           ) from None
    out: dict[str, bytes] = {}
    total = 0
    with tar:
        try:
            for n, member in enumerate(tar):
                if n >= MAX_MEMBERS:
                    raise PackageError(f"{path}: more than {MAX_MEMBERS} members")
                name = member.name
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts or name.startswith("/") or "\\" in name:
                    raise PackageError(f"{path}: member {name!r} has an unsafe path (absolute or with '..')")
                if not member.isfile():
                    kind = "link" if (member.issym() or member.islnk()) else "non-regular member"
                    raise PackageError(f"{path}: member {name!r} is a {kind}; packages hold regular files only")
                if not _ALLOWED.match(name):
                    raise PackageError(f"{path}: unexpected member {name!r}")
                if name in out:
                    raise PackageError(f"{path}: member {name!r} appears twice")
                if member.size > MAX_MEMBER_BYTES:
                    raise PackageError(f"{path}: member {name!r} is {member.size} bytes; the limit is "
                                       f"{MAX_MEMBER_BYTES}")
                total += member.size
                if total > MAX_TOTAL_BYTES:
                    raise PackageError(f"{path}: members add up to more than {MAX_TOTAL_BYTES} bytes")
                data = tar.extractfile(member).read()
                out[name] = data
        except (tarfile.TarError, OSError, EOFError) as err:
            raise PackageError(f"{path}: corrupt tar archive: {err}") from None
    return out


def read_package(path, *, library_dir: Path | None = None) -> Package:
    """Validate a package and return it; with ``library_dir`` the host library is written there (the
    only file written, at a name chosen here) so it can be loaded."""
    path = Path(path)
    members = _read_members(path)
    if MANIFEST not in members:
        raise PackageError(f"{path}: no {MANIFEST}; not an energon-tvm package")
    try:
        manifest = json.loads(members[MANIFEST].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PackageError(f"{path}: {MANIFEST} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(f"{path}: not an energon-tvm package (format {manifest.get('format')!r})"
                           if isinstance(manifest, dict) else f"{path}: {MANIFEST} is not an object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{path}: package format version {manifest.get('format_version')!r}; this "
                           f"energon-tvm reads version {FORMAT_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise PackageError(f"{path}: manifest lists no file hashes")
    for name, data in members.items():
        if name == MANIFEST:
            continue
        if name not in files:
            raise PackageError(f"{path}: member {name!r} is not listed in the manifest")
        if sha256(data) != files[name]:
            raise PackageError(f"{path}: member {name!r} does not match its hash in the manifest: the package "
                               f"was modified or is corrupt")
    missing = sorted(set(files) - set(members))
    if missing:
        raise PackageError(f"{path}: member(s) {', '.join(missing)} listed in the manifest are missing")
    for call in manifest.get("calls", []):
        if call.get("program") not in members:
            raise PackageError(f"{path}: call {call.get('site')!r} names a program that is not in the package")
    pkg = Package(manifest, {n: d for n, d in members.items() if n.startswith("programs/")})
    if library_dir is not None:
        if LIBRARY not in members:
            raise PackageError(f"{path}: no compiled library ({LIBRARY})")
        lib = Path(library_dir) / "model.so"
        lib.write_bytes(members[LIBRARY])
        pkg.library_path = lib
    return pkg
