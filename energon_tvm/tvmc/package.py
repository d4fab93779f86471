"""The package ``tvmc compile`` writes and ``tvmc run`` / ``tvmc inspect`` read.

A package is code: its library is native code that ``tvmc run`` loads and executes with your user's
rights, so run only packages you trust (a signing key makes ``tvmc run`` check who wrote one;
docs/packages.md).

A package is an (uncompressed) tar::

    manifest.json          versions, hardware config, MP-MRF parameters, inputs/outputs, per-call
                           workloads, schedules and programs, the offload report, and the SHA-256 of
                           every other member
    manifest.sig           (when written with a key) HMAC-SHA256 of manifest.json's exact bytes, in hex
    lib/model.so           the compiled host library (TVM export_library)
    programs/call_NNN.bin  each offloaded call's Energon program (the same bytes the library carries;
                           the runner refuses a call whose program is not one of these)

Loading is defensive and bounded: every member header is read and checked (names, types, sizes
against per-kind limits, offsets within the file) before any member's data is read; the manifest is
authenticated (when a key is given) before it is parsed; only members the manifest lists are read,
each checked against its hash; the library is streamed to disk, never held in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import PackageError, open_user_file
from .manifest import check_meaning, check_schema

FORMAT = "energon-tvm-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LIBRARY = "lib/model.so"
_ALLOWED = re.compile(r"^(manifest\.json|manifest\.sig|lib/model\.so|programs/call_\d{3,6}\.bin)$")

#: Limits on what a package may declare, checked on the member headers before any data is read.
MAX_MANIFEST_BYTES = 4 << 20  # the real ones are a few KB per offloaded call
MAX_SIGNATURE_BYTES = 256
#: one program: a 2048-token, 16-head layer on the edge config is 57 MB, the largest we have seen
MAX_PROGRAM_BYTES = 256 << 20
MAX_PROGRAMS_BYTES = 2 << 30  # all programs together (they are held in memory)
#: the library's own code and weights; it also embeds every program, so its limit is this plus the
#: programs' declared sizes
MAX_HOST_LIBRARY_BYTES = 1 << 30
MAX_MEMBERS = 10_000
#: tarfile reads a pax or GNU long-name header's whole declared size into memory
MAX_EXTENDED_HEADER_BYTES = 64 << 10
MAX_MANIFEST_DEPTH = 32  # a real manifest nests 7 deep
MAX_INPUTS_BYTES = 1 << 30  # what the manifest's input specs may add up to (tvmc run allocates them)

#: signing keys: ``--package-key FILE``, else these (a file holding the key in hex, or the hex itself)
KEY_FILE_ENV = "ENERGON_PACKAGE_KEY_FILE"
KEY_ENV = "ENERGON_PACKAGE_KEY"
MIN_KEY_BYTES = 16
MAX_KEY_FILE_BYTES = 4096
_CHUNK = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(key: bytes, manifest: bytes) -> bytes:
    """The ``manifest.sig`` of manifest bytes: their HMAC-SHA256 under ``key``, in hex."""
    return hmac.new(key, manifest, hashlib.sha256).hexdigest().encode()


def _parse_key(text: str, where: str) -> bytes:
    text = text.strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise PackageError(f"package key from {where} is not hexadecimal (got {len(text)} characters; make one "
                           f"with: openssl rand -hex 32)") from None
    if len(key) < MIN_KEY_BYTES:
        raise PackageError(f"package key from {where} is {len(key)} bytes; the minimum is {MIN_KEY_BYTES} "
                           f"({2 * MIN_KEY_BYTES} hex digits)")
    return key


def _read_key_file(path, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as err:
        raise PackageError(f"cannot read the package key file {str(path)!r} ({where}): {err.strerror or err}"
                           ) from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise PackageError(f"package key file {str(path)!r} ({where}) is over {MAX_KEY_FILE_BYTES} bytes; it "
                           f"should hold one key in hex")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise PackageError(f"package key file {str(path)!r} ({where}) is not hex text") from None
    return _parse_key(text, f"{str(path)!r} ({where})")


def package_key(key_file=None, environ=None) -> bytes | None:
    """The package signing key, or None when none is configured: ``key_file`` (``--package-key``),
    else the file named by ``$ENERGON_PACKAGE_KEY_FILE``, else ``$ENERGON_PACKAGE_KEY``. Keys are hex,
    at least :data:`MIN_KEY_BYTES` bytes; a variable that is set but empty is an error, not "no key"."""
    env = os.environ if environ is None else environ
    if key_file is not None:
        return _read_key_file(key_file, "--package-key")
    for name, read in ((KEY_FILE_ENV, lambda v: _read_key_file(v, f"${KEY_FILE_ENV}")),
                       (KEY_ENV, lambda v: _parse_key(v, f"${KEY_ENV}"))):
        value = env.get(name)
        if value is not None:
            if not value.strip():
                raise PackageError(f"${name} is set but empty; unset it to run without a package key")
            return read(value)
    return None


@dataclass
class Package:
    """A package in memory: the manifest and the member files' bytes (the library as a path once
    extracted, see :func:`read_package`)."""

    manifest: dict
    programs: dict[str, bytes] = field(default_factory=dict)  # member name -> bytes
    library_path: Path | None = None
    decoded: dict = field(default_factory=dict)  # member name -> its Program, decoded once by read_package

    @property
    def calls(self) -> list[dict]:
        return self.manifest["calls"]

    def program(self, call: dict) -> bytes:
        return self.programs[call["program"]]

    def program_digests(self) -> frozenset[bytes]:
        """The SHA-256 digests of the package's programs: the only programs its library may run."""
        return frozenset(hashlib.sha256(blob).digest() for blob in self.programs.values())


# -- writing ----------------------------------------------------------------------------------------
def _partial_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{secrets.token_hex(4)}.partial")


def check_output(path, option: str) -> Path:
    """``path`` as an output of ``option``: its folder must exist and it must not be a folder (checked
    before any work, so a command never fails on its last step)."""
    path = Path(path)
    if path.is_dir():
        raise PackageError(f"{option} {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise PackageError(f"{option} {str(path)!r}: folder {str(path.parent)!r} does not exist")
    return path


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, renamed over it: a
    reader sees the old file or the new one, and the temporary file is gone on every way out."""
    path = Path(path)
    tmp = _partial_name(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_package(path: Path, manifest: dict, library: bytes, programs: dict[str, bytes], *,
                  key: bytes | None = None) -> None:
    """Write a package; the manifest gets the hashes of the library and the programs, and with ``key``
    the package gets a ``manifest.sig``. The file appears whole or not at all."""
    members = {LIBRARY: library, **programs}
    for name in members:
        if not _ALLOWED.match(name) or name in (MANIFEST, SIGNATURE):
            raise PackageError(f"internal error: member name {name!r} is not a package member name")
    manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                    files={name: sha256(data) for name, data in sorted(members.items())})
    members[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    order = [MANIFEST, LIBRARY, *sorted(programs)]
    if key is not None:
        members[SIGNATURE] = sign(key, members[MANIFEST]) + b"\n"
        order.insert(1, SIGNATURE)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial_name(path)
    try:
        with open(tmp, "xb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in order:
                    data = members[name]
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mode = 0o644
                    tar.addfile(info, io.BytesIO(data))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------------
class _HeaderReads:
    """The archive file, refusing any one read over ``limit`` bytes while ``limit`` is set: tarfile reads
    a pax or GNU long-name header's whole declared size at once, before we see the member."""

    def __init__(self, f, path: Path):
        self._f, self._path = f, path
        self.name = f.name
        self.limit: int | None = MAX_EXTENDED_HEADER_BYTES

    def read(self, n=-1):
        if self.limit is not None and (n is None or n < 0 or n > self.limit):
            raise PackageError(f"{self._path}: a tar extended header at byte {self._f.tell()} declares "
                               f"{n} bytes; the limit is {self.limit}")
        return self._f.read(n)

    def seek(self, *args):
        return self._f.seek(*args)

    def tell(self):
        return self._f.tell()


def _member_limit(name: str) -> int:
    if name == MANIFEST:
        return MAX_MANIFEST_BYTES
    if name == SIGNATURE:
        return MAX_SIGNATURE_BYTES
    if name == LIBRARY:
        return MAX_HOST_LIBRARY_BYTES + MAX_PROGRAMS_BYTES  # checked again against the programs' sizes
    return MAX_PROGRAM_BYTES


def _headers(tar: tarfile.TarFile, path: Path, file_size: int) -> dict[str, tarfile.TarInfo]:
    """Every member's header, streamed with ``tar.next()`` (which seeks over the data, never reads it),
    refusing anything that is not a plainly named regular file within the limits."""
    out: dict[str, tarfile.TarInfo] = {}
    while (member := tar.next()) is not None:
        if len(out) >= MAX_MEMBERS:
            raise PackageError(f"{path}: more than {MAX_MEMBERS} members")
        name = member.name
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or name.startswith("/") or "\\" in name:
            raise PackageError(f"{path}: member {name!r} has an unsafe path (absolute or with '..')")
        if member.issparse():
            raise PackageError(f"{path}: member {name!r} is a sparse file (it would expand to {member.size} "
                               f"bytes); packages hold regular files only")
        if not member.isfile():
            kind = "link" if (member.issym() or member.islnk()) else "non-regular member"
            raise PackageError(f"{path}: member {name!r} is a {kind}; packages hold regular files only")
        if not _ALLOWED.match(name):
            raise PackageError(f"{path}: unexpected member {name!r}")
        if name in out:
            raise PackageError(f"{path}: member {name!r} appears twice")
        limit = _member_limit(name)
        if member.size > limit:
            raise PackageError(f"{path}: member {name!r} declares {member.size} bytes; the limit is {limit}")
        if member.offset_data + member.size > file_size:
            raise PackageError(f"{path}: member {name!r} declares {member.size} bytes at byte "
                               f"{member.offset_data}, past the end of the {file_size}-byte file (truncated)")
        out[name] = member
    programs = sum(m.size for n, m in out.items() if n.startswith("programs/"))
    if programs > MAX_PROGRAMS_BYTES:
        raise PackageError(f"{path}: programs declare {programs} bytes together; the limit is {MAX_PROGRAMS_BYTES}")
    if LIBRARY in out and out[LIBRARY].size > MAX_HOST_LIBRARY_BYTES + programs:
        raise PackageError(f"{path}: {LIBRARY} declares {out[LIBRARY].size} bytes; the limit is "
                           f"{MAX_HOST_LIBRARY_BYTES + programs} ({MAX_HOST_LIBRARY_BYTES} plus the {programs} "
                           f"bytes of programs it embeds)")
    return out


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    data = tar.extractfile(member).read(member.size)
    if len(data) != member.size:
        raise PackageError(f"member {member.name!r} is truncated: {len(data)} of {member.size} bytes")
    return data


def _copy_hashed(tar: tarfile.TarFile, member: tarfile.TarInfo, out) -> str:
    """Stream a member (to ``out`` when given), in bounded chunks; its SHA-256."""
    h = hashlib.sha256()
    src = tar.extractfile(member)
    left = member.size
    while left:
        chunk = src.read(min(_CHUNK, left))
        if not chunk:
            raise PackageError(f"member {member.name!r} is truncated: {member.size - left} of {member.size} bytes")
        h.update(chunk)
        if out is not None:
            out.write(chunk)
        left -= len(chunk)
    return h.hexdigest()


def _depth(doc) -> int:
    """How deep ``doc`` nests (iteratively: a hostile manifest must not exhaust the stack here either)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_MANIFEST_DEPTH:
            break
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_tensor_specs(path: Path, manifest: dict, key: str, numpy_dtypes: bool) -> int:
    """The manifest's ``inputs`` / ``outputs``: names, static shapes and dtype names (for inputs, which
    ``tvmc run`` builds with numpy, a bool, integer or float numpy dtype); the bytes they take."""
    specs = manifest.get(key)
    if not isinstance(specs, list):
        raise PackageError(f"{path}: manifest {key!r} is {type(specs).__name__}, not a list")
    total = 0
    for i, s in enumerate(specs):
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("shape"), list)
                and isinstance(s.get("dtype"), str)):
            raise PackageError(f"{path}: manifest {key}[{i}] is not a {{name, shape, dtype}} record: {str(s)[:80]}")
        shape = s["shape"]
        if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise PackageError(f"{path}: manifest {key}[{i}] ({s['name']!r}) has shape {str(shape)[:80]}; "
                               f"dimensions are non-negative integers")
        if not numpy_dtypes:
            continue
        try:
            dtype = np.dtype(s["dtype"])
        except (TypeError, ValueError):
            raise PackageError(f"{path}: manifest {key}[{i}] ({s['name']!r}) has dtype {s['dtype'][:40]!r}, "
                               f"which numpy does not know") from None
        if dtype.kind not in "biuf" or dtype.name != s["dtype"]:
            raise PackageError(f"{path}: manifest {key}[{i}] ({s['name']!r}) has dtype {s['dtype'][:40]!r}; "
                               f"tensors are bool, integer or float by name (e.g. 'float32')")
        total += int(np.prod(shape, dtype=object)) * dtype.itemsize
    return total


def _check_manifest(path: Path, manifest, members: dict[str, tarfile.TarInfo]) -> dict:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PackageError(f"{path}: not an energon-tvm package (format {manifest.get('format')!r})"
                           if isinstance(manifest, dict) else f"{path}: {MANIFEST} is not an object")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise PackageError(f"{path}: package format version {version!r}"
                           + ("" if type(version) is int else f" (a {type(version).__name__}, not an integer)")
                           + f"; this energon-tvm reads version {FORMAT_VERSION}")
    depth = _depth(manifest)
    if depth > MAX_MANIFEST_DEPTH:
        raise PackageError(f"{path}: {MANIFEST} nests more than {MAX_MANIFEST_DEPTH} levels deep")
    check_schema(path, manifest)  # every field's type, before any is used (energon_tvm.tvmc.manifest)
    files, calls = manifest["files"], manifest["calls"]
    for name in members:
        if name not in (MANIFEST, SIGNATURE) and name not in files:
            raise PackageError(f"{path}: member {name!r} is not listed in the manifest")
    missing = sorted(set(files) - set(members))
    if missing:
        raise PackageError(f"{path}: member(s) {', '.join(missing)} listed in the manifest are missing")
    for call in calls:
        if call["program"] not in members:
            raise PackageError(f"{path}: call {call['site'][:40]!r} names a program that is not in the package "
                               f"({call['program']})")
    used = {c["program"] for c in calls}
    for name in members:
        if name.startswith("programs/") and name not in used:
            raise PackageError(f"{path}: member {name!r} is no call's program")
    inputs = _check_tensor_specs(path, manifest, "inputs", numpy_dtypes=True)
    _check_tensor_specs(path, manifest, "outputs", numpy_dtypes=False)
    if inputs > MAX_INPUTS_BYTES:
        raise PackageError(f"{path}: the manifest's inputs add up to {inputs} bytes; the limit is {MAX_INPUTS_BYTES}")
    return manifest


def _decode(path: Path, name: str, blob: bytes):
    """The program a member holds (its container checked for form: layout, checksum, config)."""
    from ..isa.errors import EnergonError
    from ..isa.program import Program

    try:
        return Program.from_bytes(blob)
    except EnergonError as err:
        raise PackageError(f"{path}: member {name!r} is not a valid Energon program: {err}") from None


def _verify(path: Path, key: bytes, manifest: bytes, signature: bytes | None) -> None:
    if signature is None:
        raise PackageError(f"{path}: the package is not signed ({SIGNATURE} missing) and a package key is "
                           f"configured; only signed packages run under a key")
    if not hmac.compare_digest(sign(key, manifest), signature.strip()):
        raise PackageError(f"{path}: {SIGNATURE} does not match the manifest under the configured key: the "
                           f"package was modified or signed with another key")


def read_package(path, *, library_dir: Path | None = None, key: bytes | None = None) -> Package:
    """Validate a package and return it; with ``library_dir`` the host library is written there (the
    only file written, at a name chosen here) so it can be loaded. With ``key``, the package must carry
    a ``manifest.sig`` that matches its manifest under that key."""
    path = Path(path)
    with open_user_file(path, "package", PackageError) as f:
        file_size = os.fstat(f.fileno()).st_size
        source = _HeaderReads(f, path)
        try:
            tar = tarfile.open(fileobj=source, mode="r:")
        except (tarfile.TarError, OSError, EOFError) as err:
            raise PackageError(f"{path} is not a package (not a readable tar archive: "
                               f"{(str(err).splitlines() or [''])[0]})") from None
        try:
            members = _headers(tar, path, file_size)
            source.limit = None  # headers done: now the data, each read bounded by its checked size
            if MANIFEST not in members:
                raise PackageError(f"{path}: no {MANIFEST}; not an energon-tvm package")
            raw = _read(tar, members[MANIFEST])
            if key is not None:
                _verify(path, key, raw, _read(tar, members[SIGNATURE]) if SIGNATURE in members else None)
            try:
                manifest = json.loads(raw.decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise PackageError(f"{path}: {MANIFEST} is not valid JSON: {err}") from None
            except RecursionError:
                raise PackageError(f"{path}: {MANIFEST} nests too deeply to parse (the limit is "
                                   f"{MAX_MANIFEST_DEPTH} levels)") from None
            files = _check_manifest(path, manifest, members)["files"]
            programs = {}
            for name, member in members.items():
                if name.startswith("programs/"):
                    programs[name] = _read(tar, member)
                    if sha256(programs[name]) != files[name]:
                        raise PackageError(f"{path}: member {name!r} does not match its hash in the manifest: "
                                           f"the package was modified or is corrupt")
            pkg = Package(manifest, dict(sorted(programs.items())))
            pkg.decoded = {name: _decode(path, name, blob) for name, blob in pkg.programs.items()}
            check_meaning(path, manifest, pkg.decoded)
            if LIBRARY in members:
                lib = Path(library_dir) / "model.so" if library_dir is not None else None
                try:
                    with open(lib, "wb") if lib is not None else contextlib.nullcontext() as out:
                        digest = _copy_hashed(tar, members[LIBRARY], out)
                    if digest != files[LIBRARY]:
                        raise PackageError(f"{path}: member {LIBRARY!r} does not match its hash in the manifest: "
                                           f"the package was modified or is corrupt")
                except BaseException:
                    if lib is not None:
                        lib.unlink(missing_ok=True)
                    raise
                pkg.library_path = lib
            elif library_dir is not None:
                raise PackageError(f"{path}: no compiled library ({LIBRARY})")
        except (tarfile.TarError, EOFError) as err:
            raise PackageError(f"{path}: corrupt tar archive: {err}") from None
        except OSError as err:
            raise PackageError(f"{path}: cannot read the package or write its library: {err}") from None
    return pkg
