"""Files tvmc reads from someone else: model archives that carry native code, packages (signed or not,
tampered with, bombs), inputs .npz files (bombs, lossy or non-finite values) and the faults of writing
them. Every refusal is one typed, one-line error; nothing is loaded, decompressed or left behind."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tarfile
import types
import zipfile
import zlib

import numpy as np
import pytest
from census import pack as _repack

from energon_tvm.tvmc import PackageError, TVMCError, read_package, write
from energon_tvm.tvmc.main import main
from energon_tvm.tvmc.package import (
    MAX_EXTENDED_HEADER_BYTES,
    MAX_HOST_LIBRARY_BYTES,
    MAX_PROGRAM_BYTES,
    SIGNATURE,
    package_key,
    sign,
    write_package,
)
from energon_tvm.tvmc.runner import make_inputs

GiB = 1 << 30
#: peak-RSS growth allowed while refusing (or reading around) a bomb: far below what it declares
RSS_BOUND_KB = 64 << 10  # 64 MiB


@pytest.fixture(autouse=True)
def _no_key_in_the_environment(monkeypatch):
    monkeypatch.delenv("ENERGON_PACKAGE_KEY", raising=False)
    monkeypatch.delenv("ENERGON_PACKAGE_KEY_FILE", raising=False)


def _one_line_error(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error: "), err
    for needle in needles:
        assert needle in err[0], err
    return err[0]


# -- building hostile files -------------------------------------------------------------------------
def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _sparse_tar(path, headers) -> None:
    """A tar of ``(TarInfo, data or None)``: None leaves a hole of the declared size (a sparse file: a few
    KB on disk whatever the members declare)."""
    with open(path, "wb") as f:
        for info, data in headers:
            f.write(info.tobuf(tarfile.PAX_FORMAT))
            if data is None:
                f.seek(info.size, os.SEEK_CUR)
            else:
                f.write(data)
            f.seek(-f.tell() % tarfile.BLOCKSIZE, os.SEEK_CUR)
        f.write(bytes(2 * tarfile.BLOCKSIZE))


def _info(name, size, kind=tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info


_ZERO_BLOCK = 16 << 20


def _deflated_zeros(prefix: bytes, zero_bytes: int) -> tuple[bytes, int, int]:
    """(raw deflate stream, CRC-32, size) of ``prefix`` then ``zero_bytes`` zeros, without compressing
    them: deflate blocks after a full flush stand alone, so one block of zeros is repeated."""
    assert zero_bytes % _ZERO_BLOCK == 0
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = zeros.compress(bytes(_ZERO_BLOCK)) + zeros.flush(zlib.Z_FULL_FLUSH)
    crc, chunk = zlib.crc32(prefix), bytes(_ZERO_BLOCK)
    for _ in range(zero_bytes // _ZERO_BLOCK):
        crc = zlib.crc32(chunk, crc)
    return stream + block * (zero_bytes // _ZERO_BLOCK) + zeros.flush(), crc, len(prefix) + zero_bytes


def _zip(path, members) -> None:
    """A zip of ``(name, method, crc, size, stored bytes)`` members, written by hand so that a member can
    be a deflate stream made without deflating (see :func:`_deflated_zeros`)."""
    central = []
    with open(path, "wb") as f:
        for name, method, crc, size, data in members:
            offset, raw = f.tell(), name.encode()
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 33, crc, len(data), size, len(raw), 0))
            f.write(raw + data)
            central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 33, crc, len(data), size,
                                       len(raw), 0, 0, 0, 0, 0, offset) + raw)
        start, directory = f.tell(), b"".join(central)
        f.write(directory + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), len(directory),
                                        start, 0))


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _stored(name, data: bytes):
    return name, zipfile.ZIP_STORED, zlib.crc32(data), len(data), data


def _peak_rss_kb(kind: str, path) -> tuple[int, str]:
    """(peak-RSS growth in KB, outcome) of reading ``path`` in a fresh interpreter."""
    script = (
        "import resource, sys\n"
        "from energon_tvm.tvmc.errors import TVMCError\n"
        "from energon_tvm.tvmc.package import read_package\n"
        "from energon_tvm.tvmc.runner import make_inputs\n"
        "spec = {'inputs': [{'name': 'x', 'shape': [1, 6, 16], 'dtype': 'float32'}]}\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    got = make_inputs(spec, sys.argv[2]) if sys.argv[1] == 'npz' else read_package(sys.argv[2])\n"
        "    outcome = 'accepted ' + (','.join(sorted(got)) if isinstance(got, dict) else '')\n"
        "except TVMCError as err:\n"
        "    outcome = 'refused ' + str(err)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, outcome)\n")
    out = subprocess.run([sys.executable, "-c", script, kind, str(path)], capture_output=True, text=True,
                         timeout=120, check=True)
    delta, outcome = out.stdout.strip().split(" ", 1)
    return int(delta), outcome


# -- 1. model archives with native code ------------------------------------------------------------
@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    torch = pytest.importorskip("torch")
    root = tmp_path_factory.mktemp("pt2-native")

    class Scale(torch.nn.Module):
        def forward(self, x):
            return x * 2.0

    torch.export.save(torch.export.export(Scale(), (torch.zeros(2, 3),)), root / "clean.pt2")
    with zipfile.ZipFile(root / "clean.pt2") as z:
        prefix = z.namelist()[0].split("/")[0]
    marker = root / "library-ran"
    library = root / "x.so"
    if shutil.which("cc"):  # a real library whose loading is visible: its constructor creates the marker
        src = root / "x.c"
        src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void ran(void) '
                       f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(src)], check=True, timeout=60)
    else:
        library.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(64))
    return types.SimpleNamespace(torch=torch, root=root, prefix=prefix, marker=marker, library=library.read_bytes())


def _pe() -> bytes:
    head = bytearray(b"MZ" + bytes(0x7E))
    head[0x3C:0x40] = (0x80).to_bytes(4, "little")
    return bytes(head) + b"PE\0\0" + bytes(64)


@pytest.mark.parametrize("case", ["aotinductor", "elf-anywhere", "dylib-name", "pe-anywhere"])
def test_pt2_with_native_code_is_refused_before_torch_opens_it(pt2, case, capsys, monkeypatch):
    p = pt2.prefix
    extra = {
        # what torch.export.load hands to AOTInductor, which extracts x.so and dlopens it (verified by hand
        # with this very archive: without the check, the marker file appears)
        "aotinductor": {f"{p}/data/aotinductor/model/wrapper_metadata.json": b'{"AOTI_DEVICE_KEY": "cpu"}',
                        f"{p}/data/aotinductor/model/x_metadata.json": b'{"AOTI_DEVICE_KEY": "cpu"}',
                        f"{p}/data/aotinductor/model/x.so": pt2.library},
        "elf-anywhere": {f"{p}/data/weights/weight_7": pt2.library},
        "dylib-name": {f"{p}/extra/libx.dylib": b"not even code"},
        "pe-anywhere": {f"{p}/data/constants/blob": _pe()},
    }[case]
    crafted = pt2.root / f"{case}.pt2"
    shutil.copy(pt2.root / "clean.pt2", crafted)
    with zipfile.ZipFile(crafted, "a") as z:
        for name, data in extra.items():
            z.writestr(name, data)
    opened = []
    monkeypatch.setattr(pt2.torch.export, "load", lambda *a, **k: opened.append(a))
    out = pt2.root / f"{case}.tar"
    assert main(["compile", str(crafted), "-o", str(out)]) == 1
    line = _one_line_error(capsys, str(crafted))
    assert "native code" in line and any(name in line for name in extra), line
    assert opened == [] and not pt2.marker.exists() and not out.exists()


def test_pt2_without_native_code_passes_the_check(pt2):
    from energon_tvm.tvmc.frontends import refuse_native_code

    refuse_native_code(pt2.root / "clean.pt2")
    lookalike = pt2.root / "mz-data.pt2"  # tensor bytes that happen to start "MZ" are not a PE file
    shutil.copy(pt2.root / "clean.pt2", lookalike)
    with zipfile.ZipFile(lookalike, "a") as z:
        z.writestr(f"{pt2.prefix}/data/weights/weight_9", b"MZ" + bytes(200))
    refuse_native_code(lookalike)


# -- 2. signing, and one source of truth for programs ----------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    good, other = root / "good.key", root / "other.key"
    good.write_text(secrets.token_hex(32) + "\n")
    other.write_text(secrets.token_hex(32) + "\n")
    return types.SimpleNamespace(good=good, other=other, hex=good.read_text().strip(),
                                 key=bytes.fromhex(good.read_text()))


@pytest.fixture(scope="module")
def signed(model_files, keys):
    out = model_files / "signed.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out), "--package-key", str(keys.good)]) == 0
    return out


def test_signed_package_round_trip(signed, keys, model_files, capsys, monkeypatch):
    members = _members(signed)
    assert members[SIGNATURE].strip() == sign(keys.key, members["manifest.json"])
    assert read_package(signed, key=keys.key).calls
    assert main(["run", str(signed), "--package-key", str(keys.good), "--inputs", str(model_files / "inputs.npz")]) == 0
    monkeypatch.setenv("ENERGON_PACKAGE_KEY", keys.hex)
    assert main(["run", str(signed)]) == 0
    monkeypatch.delenv("ENERGON_PACKAGE_KEY")
    monkeypatch.setenv("ENERGON_PACKAGE_KEY_FILE", str(keys.good))
    assert main(["run", str(signed)]) == 0
    monkeypatch.delenv("ENERGON_PACKAGE_KEY_FILE")
    assert main(["run", str(signed)]) == 0  # no key configured: the signature is not needed
    capsys.readouterr()


def test_tampered_library_passes_the_hashes_and_only_a_key_catches_it(signed, keys, tmp_path, capsys):
    members = _members(signed)
    members["lib/model.so"] += b"\0" * 64  # still a loadable library: this one would run
    tampered = tmp_path / "tampered.tar"
    _repack(tampered, members)
    read_package(tampered)  # the hashes were recomputed: without a key nothing can tell
    assert main(["run", str(tampered)]) == 0
    capsys.readouterr()
    with pytest.raises(PackageError, match="does not match the manifest under the configured key"):
        read_package(tampered, key=keys.key)
    assert main(["run", str(tampered), "--package-key", str(keys.good)]) == 1
    _one_line_error(capsys, "manifest.sig does not match the manifest under the configured key")


def test_wrong_key_and_unsigned_package_are_refused_under_a_key(signed, package, keys, tmp_path, capsys):
    assert main(["run", str(signed), "--package-key", str(keys.other)]) == 1
    _one_line_error(capsys, "does not match the manifest under the configured key")
    assert main(["run", str(package), "--package-key", str(keys.good)]) == 1
    _one_line_error(capsys, "the package is not signed", "manifest.sig missing")
    stripped = tmp_path / "stripped.tar"  # a signed package with its signature removed is unsigned
    _repack(stripped, {n: d for n, d in _members(signed).items() if n != SIGNATURE}, rehash=False)
    with pytest.raises(PackageError, match="is not signed"):
        read_package(stripped, key=keys.key)


@pytest.mark.parametrize("setup, message", [
    (lambda d: {"key_file": d / "missing.key"}, "cannot read the package key file"),
    (lambda d: {"key_file": (d / "bin.key", (d / "bin.key").write_bytes(b"\xff" * 32))[0]}, "is not hex text"),
    (lambda d: {"key_file": (d / "short.key", (d / "short.key").write_text("abcd"))[0]}, "the minimum is 16"),
    (lambda d: {"environ": {"ENERGON_PACKAGE_KEY": "zz" * 16}}, "is not hexadecimal"),
    (lambda d: {"environ": {"ENERGON_PACKAGE_KEY": " "}}, "is set but empty"),
])
def test_bad_key_configuration_is_one_line(tmp_path, setup, message):
    with pytest.raises(PackageError, match=message) as err:
        package_key(**setup(tmp_path))
    assert "\n" not in str(err.value)


def test_bad_key_fails_compile_before_compiling(model_files, tmp_path, capsys):
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(tmp_path / "x.tar"),
                 "--package-key", str(tmp_path / "missing.key")]) == 1
    _one_line_error(capsys, "cannot read the package key file")


def test_library_programs_must_be_the_listed_ones(package, tmp_path, capsys):
    from energon_tvm.isa.program import Program
    from energon_tvm.schedules import AttentionWorkload

    from energon_tvm.executor import EnergonTarget, compile_call

    members = _members(package)
    listed = [n for n in members if n.startswith("programs/")]
    workload = Program.from_bytes(members[listed[0]]).meta["workload"]
    other = compile_call(AttentionWorkload.from_dict(dict(workload, params={"rounds": [[4, 2, -1.0], [4, 4, -1.0]]})),
                         EnergonTarget.create("edge")).blob
    assert other != members[listed[0]]
    for name in listed:  # both calls of this model carry the same program: replace every listed copy
        members[name] = other
    swapped = tmp_path / "swapped.tar"
    _repack(swapped, members)
    with pytest.raises(PackageError, match="states a workload its program was not built for: workload.params"):
        read_package(swapped)  # the hashes agree, but the manifest no longer describes the programs
    manifest = json.loads(members["manifest.json"])
    for call in manifest["calls"]:
        call["workload"] = Program.from_bytes(other).meta["workload"]
    members["manifest.json"] = json.dumps(manifest).encode()
    _repack(swapped, members)
    read_package(swapped)  # consistent manifest and hashes: what tvmc inspect shows is `other`
    assert main(["run", str(swapped)]) == 1
    _one_line_error(capsys, "is not one the package lists")


# -- 3. bounded memory: package bombs --------------------------------------------------------------
_MANIFEST = json.dumps({"format": "energon-tvm-package", "format_version": 1, "files": {}}).encode()


@pytest.mark.parametrize("case, headers, message", [
    ("program-1GiB", [(_info("manifest.json", len(_MANIFEST)), _MANIFEST), (_info("programs/call_000.bin", GiB), None)],
     f"'programs/call_000.bin' declares {GiB} bytes; the limit is {MAX_PROGRAM_BYTES}"),
    ("manifest-1GiB", [(_info("manifest.json", GiB), None)], "'manifest.json' declares"),
    ("library-2GiB", [(_info("manifest.json", len(_MANIFEST)), _MANIFEST), (_info("programs/call_000.bin", 4096), None),
                      (_info("lib/model.so", 2 * GiB), None)],
     f"the limit is {MAX_HOST_LIBRARY_BYTES + 4096} ({MAX_HOST_LIBRARY_BYTES} plus the 4096 bytes of programs"),
    ("pax-header-512MiB", [(_info("pax", 512 << 20, tarfile.XHDTYPE), None)],
     f"a tar extended header at byte 512 declares {512 << 20} bytes; the limit is {MAX_EXTENDED_HEADER_BYTES}"),
    ("longname-512MiB", [(_info("././@LongLink", 512 << 20, tarfile.GNUTYPE_LONGNAME), None)],
     "a tar extended header at byte 512 declares"),
    ("gnu-sparse", [(_info("programs/call_000.bin", 0, tarfile.GNUTYPE_SPARSE), None)], "is a sparse file"),
])
def test_package_bombs_are_refused_from_their_headers(tmp_path, monkeypatch, case, headers, message):
    bomb = tmp_path / f"{case}.tar"
    _sparse_tar(bomb, headers)

    def no_data(*_args):
        raise AssertionError("a member's data was read")

    monkeypatch.setattr(tarfile.TarFile, "extractfile", no_data)
    with pytest.raises(PackageError) as err:
        read_package(bomb, library_dir=tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [bomb.name]


def test_truncated_member_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "truncated.tar"
    with open(bomb, "wb") as f:
        f.write(_info("manifest.json", 100_000).tobuf(tarfile.PAX_FORMAT) + b"{}")
    with pytest.raises(PackageError, match="past the end of the 514-byte file"):
        read_package(bomb)


def test_package_bomb_peak_memory(tmp_path):
    bomb = tmp_path / "bomb.tar"
    _sparse_tar(bomb, [(_info("manifest.json", len(_MANIFEST)), _MANIFEST),
                       (_info("programs/call_000.bin", 200 << 20), None), (_info("lib/model.so", GiB), None),
                       (_info("programs/call_001.bin", GiB), None)])
    delta, outcome = _peak_rss_kb("tar", bomb)
    assert outcome.startswith("refused") and "'programs/call_001.bin' declares" in outcome, outcome
    assert delta < RSS_BOUND_KB, f"peak RSS grew {delta} KB reading a {os.path.getsize(bomb)}-byte bomb"


@pytest.mark.parametrize("depth, message", [
    (200_000, "nests too deeply to parse"),  # json.loads itself would raise RecursionError
    (40, "nests more than 32 levels deep"),  # parses, but would be deeper than any reader expects
])
def test_deeply_nested_manifest_is_one_line(tmp_path, capsys, depth, message):
    nested = "[" * depth + "]" * depth
    text = nested if depth > 1000 else json.dumps({"format": "energon-tvm-package", "format_version": 1,
                                                   "files": {}, "x": json.loads(nested)})
    bad = tmp_path / "nested.tar"
    _repack(bad, {"manifest.json": text.encode()}, rehash=False)
    assert main(["inspect", str(bad)]) == 1  # the reader tvmc run uses too, without importing TVM
    _one_line_error(capsys, message)


# -- 3. bounded memory and honest values: inputs ----------------------------------------------------
_SPEC = {"inputs": [{"name": "x", "shape": [1, 6, 16], "dtype": "float32"}]}


def test_unused_2GiB_member_is_never_decompressed(tmp_path):
    x = np.arange(96, dtype=np.float32).reshape(1, 6, 16)
    stream, crc, size = _deflated_zeros(b"", 2 * GiB)
    bomb = tmp_path / "bomb.npz"
    _zip(bomb, [_stored("x.npy", _npy(x)), ("unused.npy", zipfile.ZIP_DEFLATED, crc, size, stream)])
    assert os.path.getsize(bomb) < 3 << 20
    np.testing.assert_array_equal(make_inputs(_SPEC, bomb)["x"], x)
    delta, outcome = _peak_rss_kb("npz", bomb)
    assert outcome == "accepted x", outcome
    assert delta < RSS_BOUND_KB, f"peak RSS grew {delta} KB reading a {os.path.getsize(bomb)}-byte npz"


def test_used_member_larger_than_its_shape_is_refused_before_decompressing(tmp_path):
    stream, crc, size = _deflated_zeros(_npy(np.zeros((1, 6, 16), np.float32)), 512 << 20)
    bomb = tmp_path / "trailing.npz"
    _zip(bomb, [("x.npy", zipfile.ZIP_DEFLATED, crc, size, stream)])
    delta, outcome = _peak_rss_kb("npz", bomb)
    assert outcome.startswith("refused") and f"declares {(512 << 20) + 384} bytes of data" in outcome, outcome
    assert "needs 384" in outcome and delta < RSS_BOUND_KB, (delta, outcome)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("arrays, dtype, message", [
    ({"x": np.zeros((1, 6, 16), np.float64)}, "float32", "input 'x' is float64; the package takes float32"),
    ({"x": np.full((1, 6, 16), np.nan, np.float32)}, "float32", "holds 96 NaN or infinite value(s), the first nan"),
    ({"x": np.where(np.eye(6, 16)[None] > 0, np.inf, 0).astype(np.float32)}, "float32", "the first inf at [0, 0, 0]"),
    ({"x": np.full((1, 6, 16), 2 ** 40, np.int64)}, "int32", "holds 1099511627776 at [0, 0, 0], which the package's "
                                                             "dtype int32 cannot hold (int32 holds [-2147483648"),
    ({"x": np.full((1, 6, 16), 2 ** 25 + 1, np.int64)}, "float32", "integers in [-2**24, 2**24] are exact in float32"),
    ({"x": np.zeros((1, 6, 16), np.complex64)}, "float32", "has dtype complex64"),
    ({"x": np.full((1, 6, 16), "a")}, "float32", "has dtype <U1"),
    ({"x": np.empty((1, 6, 16), object)}, "float32", "not a readable .npz of plain arrays"),
    ({"x.npy": np.zeros((1, 6, 16), np.float32)}, "float32", None),  # np.savez names it x.npy.npy: absent
])
def test_input_values_follow_the_rules(tmp_path, arrays, dtype, message):
    spec = {"inputs": [dict(_SPEC["inputs"][0], dtype=dtype)]}
    path = _npz(tmp_path / "in.npz", **arrays)
    with pytest.raises(TVMCError) as err:
        make_inputs(spec, path)
    assert (message or "lacks input(s) x") in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_lossless_conversions_are_accepted(tmp_path):
    ids = np.arange(96, dtype=np.int64).reshape(1, 6, 16)
    got = make_inputs({"inputs": [dict(_SPEC["inputs"][0], dtype="int32")]}, _npz(tmp_path / "a.npz", x=ids))["x"]
    assert got.dtype == np.int32 and (got == ids).all()
    got = make_inputs(_SPEC, _npz(tmp_path / "b.npz", x=ids.astype(np.float16)))["x"]
    assert got.dtype == np.float32 and (got == ids).all()
    got = make_inputs(_SPEC, _npz(tmp_path / "c.npz", x=np.asfortranarray(ids.astype(np.float32))))["x"]
    assert (got == ids).all()


def test_duplicate_and_corrupt_members_are_refused(tmp_path):
    data = _npy(np.zeros((1, 6, 16), np.float32))
    dup = tmp_path / "dup.npz"
    _zip(dup, [_stored("x.npy", data), _stored("x.npy", data)])
    with pytest.raises(TVMCError, match="input 'x' appears twice"):
        make_inputs(_SPEC, dup)
    corrupt = tmp_path / "crc.npz"
    name, method, crc, size, raw = _stored("x.npy", data)
    _zip(corrupt, [(name, method, crc ^ 1, size, raw)])
    with pytest.raises(TVMCError, match="not a readable .npz of plain arrays: BadZipFile"):
        make_inputs(_SPEC, corrupt)


# -- 4. faults while writing -------------------------------------------------------------------------
def test_interrupted_package_write_leaves_the_old_file_and_no_partial(tmp_path, monkeypatch):
    out = tmp_path / "model.tar"
    out.write_bytes(b"the previous package")
    real, calls = tarfile.TarFile.addfile, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "addfile", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_package(out, {}, b"library", {"programs/call_000.bin": b"program"})
    assert out.read_bytes() == b"the previous package"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar"]


def _result(**changes):
    """What :func:`energon_tvm.tvmc.write` reads of a compile result."""
    return types.SimpleNamespace(**{"manifest": lambda: {"inputs": [], "outputs": [], "calls": []},
                                    "library": b"library", "calls": [], "relax_text": "# relax\n", **changes})


@pytest.mark.parametrize("prepare, dump_code, message", [
    (lambda out: None, "isa,asm", "unknown --dump-code kind(s) asm"),
    (lambda out: out.with_name(out.name + ".isa").write_text("a file"), "isa", "which is a file"),
])
def test_failed_write_keeps_the_existing_output(tmp_path, prepare, dump_code, message):
    out = tmp_path / "model.tar"
    out.write_bytes(b"the previous package")
    prepare(out)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(TVMCError, match=re.escape(message)):
        write(_result(), out, dump_code)
    assert out.read_bytes() == b"the previous package"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_write_replaces_the_output_and_dumps_whole(tmp_path):
    out = tmp_path / "model.tar"
    out.write_bytes(b"the previous package")
    written = write(_result(), out, "relax,isa")
    assert written == [out, tmp_path / "model.tar.relax.py"]
    assert json.loads(_members(out)["manifest.json"])["calls"] == [] and written[1].read_text() == "# relax\n"
    assert not list(tmp_path.glob("*.partial"))
