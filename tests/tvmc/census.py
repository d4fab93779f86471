"""A census of bad input against every tvmc surface: what a user can get wrong, and what tvmc answers.

Each :class:`Case` builds one bad input (a file, an option, an edited package or binary) in a scratch
folder and names the ``tvmc`` command line that receives it. :func:`run_case` runs that command in
this process (``energon_tvm.tvmc.main.main``) and classifies what came back:

- ``clean``: a non-zero exit, stderr's last line a one-line error (``tvmc: error: ...`` or argparse's
  ``tvmc CMD: error: ...``), no traceback, and none of the command's outputs left behind;
- ``traceback``: an exception escaped, or a traceback was printed;
- ``accepted``: the command succeeded on input it should have refused (a silent acceptance);
- ``leftover``: it failed cleanly but left an output file behind;
- ``hang``: it did not finish within the case's time limit.

The goal is ``clean`` for every case. ``bench/bad_inputs.py`` prints the table per surface; the test
suite (tests/tvmc/test_bad_input_census.py) runs the cases that need no compile and requires all clean.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import signal
import tarfile
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SURFACES = ("compile", "calibrate", "run", "inspect", "tune", "binaries", "packages")
OUTCOMES = ("clean", "traceback", "accepted", "leftover", "hang")


@dataclass(frozen=True)
class Fixtures:
    """The good files bad inputs are made from: a small ONNX model with two attention sites, its inputs,
    its compiled package, one of the package's programs and that program's assembly."""

    root: Path
    model: Path
    inputs: Path
    package: Path
    program: Path
    asm: Path


@dataclass(frozen=True)
class Case:
    surface: str
    name: str
    #: (fixtures, scratch folder) -> (argv, the outputs the command must not leave behind)
    build: Callable[[Fixtures, Path], tuple[list[str], list[Path]]]
    compiles: bool = False  # the command may get as far as importing the model (slow; bench only)
    timeout: int = 120


@dataclass
class Outcome:
    case: Case
    kind: str
    exit_code: int | None
    last_line: str
    detail: str = field(default="")


def make_fixtures(root: Path, compiled: Path | None = None) -> Fixtures:
    """The fixtures in ``root``: the small two-site model of tests/relax/onnx_graphs.py, compiled
    (about 20 s) unless ``compiled`` is a folder holding model.onnx, inputs.npz and model.tar already."""
    import shutil

    import onnx
    from energon_tvm.isa.asm import disassemble
    from energon_tvm.isa.program import Program
    from onnx_graphs import multi_site_model

    from energon_tvm.tvmc import compile_model, write

    root.mkdir(parents=True, exist_ok=True)
    if compiled is not None:
        shutil.copy(compiled / "model.onnx", root / "model.onnx")
        shutil.copy(compiled / "inputs.npz", root / "in.npz")
        shutil.copy(compiled / "model.tar", root / "model.tar")
    else:
        model, inputs = multi_site_model()
        onnx.save(model, root / "model.onnx")
        np.savez(root / "in.npz", **inputs)
        write(compile_model(root / "model.onnx"), root / "model.tar")
    members = _members(root / "model.tar")
    blob = members["programs/call_000.bin"]
    (root / "call.bin").write_bytes(blob)
    (root / "call.asm").write_text(disassemble(Program.from_bytes(blob)))
    return Fixtures(root, root / "model.onnx", root / "in.npz", root / "model.tar", root / "call.bin",
                    root / "call.asm")


# -- building bad files ---------------------------------------------------------------------------------
def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def pack(dst: Path, members: dict[str, bytes], *, rehash: bool = True, links: dict[str, str] | None = None) -> Path:
    """A package tar of ``members`` (and symbolic ``links``); with ``rehash`` the manifest's hashes are
    recomputed first (an edit made consistently, as anyone who edits a package can) and any manifest.sig
    is kept as it was."""
    members = dict(members)
    if rehash and "manifest.json" in members:
        manifest = json.loads(members["manifest.json"])
        if isinstance(manifest, dict):
            manifest["files"] = {n: hashlib.sha256(d).hexdigest() for n, d in sorted(members.items())
                                 if n not in ("manifest.json", "manifest.sig")}
            members["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with tarfile.open(dst, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return dst


def _edit_manifest(fx: Fixtures, tmp: Path, edit: Callable[[dict], object], name: str = "edited.tar") -> Path:
    members = _members(fx.package)
    manifest = json.loads(members["manifest.json"])
    result = edit(manifest)
    members["manifest.json"] = json.dumps(manifest if result is None else result).encode()
    return pack(tmp / name, members)


def _edit_program(fx: Fixtures, tmp: Path, edit: Callable[[bytes], bytes], name: str = "prog.tar") -> Path:
    members = _members(fx.package)
    for key in [k for k in members if k.startswith("programs/")]:
        members[key] = edit(members[key])
    return pack(tmp / name, members)


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _good_inputs(fx: Fixtures) -> dict[str, np.ndarray]:
    with np.load(fx.inputs) as z:
        return {k: z[k] for k in z.files}


def _with_input(fx: Fixtures, tmp: Path, name: str, value) -> Path:
    arrays = _good_inputs(fx)
    arrays[name] = value
    return _npz(tmp / "in.npz", **arrays)


def _set(path: list, value):
    """A manifest edit: set the value at ``path`` (keys and list indices)."""
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return edit


def _delete(path: list):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return edit


def _program_field(offset: int, value: bytes):
    def edit(blob: bytes) -> bytes:
        return blob[:offset] + value + blob[offset + len(value):]
    return edit


def _rechecksummed(blob: bytes) -> bytes:
    """``blob`` with its checksum recomputed (the container's rule: the first bytes of SHA-256 over
    everything before it), as anyone who edits a binary can."""
    from energon_tvm.isa.program import CHECKSUM_BYTES

    body = blob[:-CHECKSUM_BYTES]
    return body + hashlib.sha256(body).digest()[:CHECKSUM_BYTES]


# -- the cases -------------------------------------------------------------------------------------------
def _run(fx: Fixtures, *extra: str, package: Path | None = None) -> list[str]:
    return ["run", str(package or fx.package), "--inputs", str(fx.inputs), *extra]


def _compile(fx: Fixtures, tmp: Path, *extra: str, model: Path | None = None) -> tuple[list[str], list[Path]]:
    out = tmp / "out.tar"
    return ["compile", str(model or fx.model), "-o", str(out), *extra], [out]


def _tune(fx: Fixtures, tmp: Path, *extra: str, model: Path | None = None) -> tuple[list[str], list[Path]]:
    out = tmp / "records.jsonl"
    return ["tune", str(model or fx.model), "-o", str(out), "--trials", "2", *extra], [out]


def _tune_host(fx: Fixtures, tmp: Path, *extra: str) -> tuple[list[str], list[Path]]:
    out = tmp / "host-db"
    return ["tune", str(fx.model), "-o", str(out), "--host", *extra], [out]


def _host_db(tmp: Path, workloads: str | None, records: str | None) -> Path:
    """A folder holding the two files of a MetaSchedule database with these contents (None: absent)."""
    folder = tmp / "db"
    folder.mkdir(exist_ok=True)
    for name, text in (("database_workload.json", workloads), ("database_tuning_record.json", records)):
        if text is not None:
            (folder / name).write_text(text)
    return folder


def _thresholds(fx: Fixtures, tmp: Path, edit: Callable[[dict], object] | None = None) -> Path:
    """A thresholds file for the fixture model (as tvmc calibrate writes one: its two sites of two heads,
    the model's digest), edited by ``edit`` (which changes the record in place or returns another)."""
    site = lambda name: {"name": name, "heads": 2, "values": [[6.0, 8.0], [4.0, 4.0]],  # noqa: E731
                         "mass_mean": [0.99, 0.99], "mass_p10": [0.95, 0.95], "rows": [6, 6],
                         "kept_ratio": [[0.8, 0.8], [0.6, 0.6]], "flagged": []}
    record = {"format": "energon-thresholds", "version": 1, "rule": "gap", "bits": [[4, 2], [4, 4]], "budget": 0.99,
              "view": "msb", "round1_weight": 0.25, "sites": [site("lv13"), site("lv29")],
              "model": {"path": fx.model.name, "sha256": hashlib.sha256(fx.model.read_bytes()).hexdigest()},
              "input_shapes": None}
    if edit is not None:
        result = edit(record)
        record = record if result is None else result
    return _file(tmp, "thresholds.json", json.dumps(record))


def _calibrate(fx: Fixtures, tmp: Path, *extra: str, inputs: Path | None = None) -> tuple[list[str], list[Path]]:
    out = tmp / "thresholds.json"
    return ["calibrate", str(fx.model), "--calibration", str(inputs or fx.inputs), "-o", str(out), *extra], [out]


def _file(tmp: Path, name: str, data: bytes | str) -> Path:
    (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
    return tmp / name


def _cases() -> list[Case]:
    cases: list[Case] = []

    def case(surface, name, compiles=False, timeout=120):
        def register(build):
            cases.append(Case(surface, name, build, compiles, timeout))
            return build
        return register

    # ---- compile: the model file ----
    for name, data, suffix in [("empty .onnx", b"", ".onnx"), ("random bytes .onnx", bytes(range(256)) * 4, ".onnx"),
                               ("text as .onnx", b"not a model\n", ".onnx"), ("unknown suffix", b"x", ".txt"),
                               ("empty .pt2", b"", ".pt2"), ("text as .pt2", b"hello", ".pt2")]:
        case("compile", name)(lambda fx, tmp, d=data, s=suffix: _compile(fx, tmp, model=_file(tmp, "m" + s, d)))
    case("compile", "missing model")(lambda fx, tmp: _compile(fx, tmp, model=tmp / "absent.onnx"))
    case("compile", "model is a folder")(lambda fx, tmp: _compile(fx, tmp, model=tmp))
    case("compile", "truncated .onnx")(
        lambda fx, tmp: _compile(fx, tmp, model=_file(tmp, "t.onnx", fx.model.read_bytes()[:1000])))
    case("compile", "--model-format bogus")(lambda fx, tmp: _compile(fx, tmp, "--model-format", "tflite"))
    case("compile", ".onnx read as pytorch")(lambda fx, tmp: _compile(fx, tmp, "--model-format", "pytorch"))

    def _invalid_graph(fx, tmp):
        import onnx

        m = onnx.load(fx.model)
        m.graph.node[0].input[0] = "no_such_tensor"
        onnx.save(m, tmp / "invalid.onnx")
        return _compile(fx, tmp, model=tmp / "invalid.onnx")
    case("compile", "graph reads an undefined tensor")(_invalid_graph)

    def _dynamic(fx, tmp):
        import onnx

        m = onnx.load(fx.model)
        m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "seq"
        onnx.save(m, tmp / "dyn.onnx")
        return _compile(fx, tmp, model=tmp / "dyn.onnx")
    case("compile", "dynamic dim without --input-shapes")(_dynamic)
    # ---- compile: options ----
    for value in ["x", "x:[1,6", "x:[1,a,16]", "x:[1,0,16]", "x:[1,-6,16]", "x:[1,6]", "nope:[1,6,16]",
                  "x:[1,7,16]", "x:[1,6,16],x:[1,6,16]"]:
        case("compile", f"--input-shapes {value}")(lambda fx, tmp, v=value: _compile(fx, tmp, "--input-shapes", v))
    for value in ["", "cuda", "energon", "llvm, llvm", "energon -mcpu=x, llvm", "energon,, llvm"]:
        case("compile", f"--target {value!r}")(lambda fx, tmp, v=value: _compile(fx, tmp, "--target", v))
    for option, value in [("config", "nosuch"), ("config", "../../etc/passwd"), ("config", "/dev/null"),
                          ("alpha", "nan,0"), ("alpha", "inf,0"), ("alpha", "a,b"), ("alpha", "2,0"), ("alpha", "0"),
                          ("alpha", "0,0,0"), ("rounds", "4x"), ("rounds", "4x2x1"), ("rounds", "0x2"),
                          ("rounds", "4x17"), ("rounds", "a,b"), ("rounds", "4x4,4x2"), ("rounds", "-4x2"),
                          ("rule", "topk"), ("gap", "nan,1"), ("gap", "-1,2"), ("gap", "100,1"), ("gap", "1"),
                          ("gap", "x,y")]:
        case("compile", f"--target-energon-{option} {value}")(
            lambda fx, tmp, o=option, v=value: _compile(fx, tmp, f"--target-energon-{o}={v}"))
    case("compile", "--target-energon-alpha with the gap rule")(
        lambda fx, tmp: _compile(fx, tmp, "--target-energon-rule=gap", "--target-energon-alpha=0,0"))
    # ---- compile: the selection policy and each policy's own option ----
    def policy(name, *more):
        return ["--target-energon-policy", name, *more]
    for name, extra in [("--target-energon-policy bogus", policy("spatten")),
                        ("--target-energon-policy empty", ["--target-energon-policy="]),
                        ("--target-energon-topk without its policy", ["--target-energon-topk", "0.5"]),
                        ("--target-energon-sanger, policy topk", policy("topk", "--target-energon-sanger", "0.1")),
                        ("--target-energon-topk, policy mpmrf", policy("mpmrf", "--target-energon-topk", "0.5")),
                        ("--target-energon-topk, policy dense", policy("dense", "--target-energon-topk", "0.5")),
                        ("--target-energon-topk 0", policy("topk", "--target-energon-topk", "0")),
                        ("--target-energon-topk 1.5", policy("topk", "--target-energon-topk=1.5")),
                        ("--target-energon-topk -0.5", policy("topk", "--target-energon-topk=-0.5")),
                        ("--target-energon-topk nan", policy("topk", "--target-energon-topk", "nan")),
                        ("--target-energon-topk below one step", policy("topk", "--target-energon-topk", "1e-6")),
                        ("--target-energon-topk a list", policy("topk", "--target-energon-topk", "0.25,0.5")),
                        ("--target-energon-sanger -0.1", policy("sanger", "--target-energon-sanger=-0.1")),
                        ("--target-energon-sanger 2", policy("sanger", "--target-energon-sanger", "2")),
                        ("--target-energon-sanger text", policy("sanger", "--target-energon-sanger", "high")),
                        ("--target-energon-rule, policy topk", policy("topk", "--target-energon-rule", "gap")),
                        ("--target-energon-alpha, policy sanger", policy("sanger", "--target-energon-alpha=0,0")),
                        ("--target-energon-gap, policy dense", policy("dense", "--target-energon-gap", "8,4")),
                        ("--target-energon-rounds, policy topk", policy("topk", "--target-energon-rounds", "4x4")),
                        ("--target-energon-rule sanger", ["--target-energon-rule", "sanger"]),
                        ("--target-energon-policy with --target llvm", ["--target", "llvm", *policy("topk")])]:
        case("compile", name)(lambda fx, tmp, e=extra: _compile(fx, tmp, *e))
    case("compile", "--target-llvm-mcpu bogus")(lambda fx, tmp: _compile(fx, tmp, "--target-llvm-mcpu", "pentium9000"))
    case("compile", "--target-llvm-fast-math yes")(lambda fx, tmp: _compile(fx, tmp, "--target-llvm-fast-math", "yes"))
    case("compile", "energon option with --target llvm")(
        lambda fx, tmp: _compile(fx, tmp, "--target", "llvm", "--target-energon-config", "edge"))

    def _bad_config_file(text):
        def build(fx, tmp):
            return _compile(fx, tmp, "--target-energon-config", str(_file(tmp, "cfg.toml", text.encode())))
        return build
    for name, text in [("not TOML", "[[[ nope"), ("empty TOML", ""),
                       ("negative buffer", "name='x'\n[buffers]\nkv=-1\n")]:
        case("compile", f"config file {name}")(_bad_config_file(text))
    case("compile", "-o in a missing folder")(
        lambda fx, tmp: (["compile", str(fx.model), "-o", str(tmp / "no" / "out.tar")], [tmp / "no" / "out.tar"]))
    case("compile", "-o is a folder")(lambda fx, tmp: (["compile", str(fx.model), "-o", str(tmp)], []))
    case("compile", "--dump-code asm")(lambda fx, tmp: _compile(fx, tmp, "--dump-code", "asm"))
    case("compile", "--dump-offloads into a missing folder")(
        lambda fx, tmp: _compile(fx, tmp, "--dump-offloads", str(tmp / "no" / "offloads.txt")))
    case("compile", "--tuning-records missing")(
        lambda fx, tmp: _compile(fx, tmp, "--tuning-records", str(tmp / "r.jsonl")))
    case("compile", "--tuning-records binary")(
        lambda fx, tmp: _compile(fx, tmp, "--tuning-records", str(_file(tmp, "r.jsonl", bytes(range(256))))))
    case("compile", "--tuning-records a JSON list")(
        lambda fx, tmp: _compile(fx, tmp, "--tuning-records", str(_file(tmp, "r.jsonl", b"[1, 2, 3]\n"))))
    case("compile", "--package-key missing")(lambda fx, tmp: _compile(fx, tmp, "--package-key", str(tmp / "k")))
    case("compile", "--package-key not hex")(
        lambda fx, tmp: _compile(fx, tmp, "--package-key", str(_file(tmp, "k", b"not hex at all"))))

    # ---- run: options and outputs ----
    for name, extra in [("--seed -1", ["--seed", "-1"]), ("--repeat 0", ["--repeat", "0"]),
                        ("--repeat -3", ["--repeat", "-3"]), ("--repeat x", ["--repeat", "x"]),
                        ("--memory-budget garbage", ["--memory-budget", "lots"]),
                        ("--memory-budget 1KiB", ["--memory-budget", "1KiB"]),
                        ("--memory-budget -5GiB", ["--memory-budget", "-5GiB"]),
                        ("--fill-mode bogus", ["--fill-mode", "bogus"]),
                        ("--inputs and --fill-mode", ["--fill-mode", "zeros"])]:
        case("run", name)(lambda fx, tmp, e=extra: (_run(fx, *e), []))
    for option, leaf in [("--outputs", "out.npz"), ("--trace", "trace.json"), ("--report", "report.html"),
                         ("--reference", "ref.npz")]:
        case("run", f"{option} in a missing folder")(
            lambda fx, tmp, o=option, f=leaf: (_run(fx, o, str(tmp / "no" / f)), [tmp / "no" / f]))
        if option != "--reference":
            case("run", f"{option} is a folder")(lambda fx, tmp, o=option: (_run(fx, o, str(tmp)), []))
    case("run", "--backend bogus")(lambda fx, tmp: (_run(fx, "--backend", "fast"), []))
    case("run", "--print-top on the reference backend")(
        lambda fx, tmp: (_run(fx, "--backend", "reference", "--print-top", "1"), []))
    case("run", "--trace on the reference backend")(
        lambda fx, tmp: (_run(fx, "--backend", "reference", "--trace", str(tmp / "t.json")), [tmp / "t.json"]))
    case("run", "--dask-scheduler with one input")(
        lambda fx, tmp: (_run(fx, "--dask-scheduler", "tcp://127.0.0.1:1"), []))

    def _samples(fx, tmp, n_x, n_mask, name="data.npz"):
        arrays = _good_inputs(fx)
        return _npz(tmp / name, x=np.stack([arrays["x"]] * n_x), mask=np.stack([arrays["mask"]] * n_mask))
    case("run", "data set with mixed N")(
        lambda fx, tmp: (["run", str(fx.package), "-i", str(_samples(fx, tmp, 3, 2))], []))
    case("run", "data set with --trace")(
        lambda fx, tmp: (["run", str(fx.package), "-i", str(_samples(fx, tmp, 3, 3)), "--trace",
                          str(tmp / "t.json")], [tmp / "t.json"]))
    case("run", "data set with a NaN sample")(
        lambda fx, tmp: (["run", str(fx.package), "-i", str(_npz(tmp / "d.npz", x=np.stack(
            [_good_inputs(fx)["x"], np.full((1, 6, 16), np.nan, np.float32)]), mask=np.stack(
            [_good_inputs(fx)["mask"]] * 2))), "-o", str(tmp / "o.npz")], [tmp / "o.npz"]))
    case("run", "data set folder empty")(
        lambda fx, tmp: ((tmp / "empty").mkdir() or ["run", str(fx.package), "-i", str(tmp / "empty")], []))
    case("run", "--reference of other shapes")(
        lambda fx, tmp: (_run(fx, "--reference", str(_npz(tmp / "ref.npz", output_0=np.zeros(3, np.float32)))), []))
    case("run", "--package-key wrong")(
        lambda fx, tmp: (_run(fx, "--package-key", str(_file(tmp, "k", b"00" * 32))), []))
    # ---- run: inputs ----
    case("run", "inputs missing")(lambda fx, tmp: (["run", str(fx.package), "--inputs", str(tmp / "in.npz")], []))
    for name, data in [("inputs empty file", b""), ("inputs text", b"x=1\n"),
                       ("inputs random bytes", bytes(range(256)))]:
        case("run", name)(
            lambda fx, tmp, d=data: (["run", str(fx.package), "--inputs", str(_file(tmp, "in.npz", d))], []))

    def _npy_file(fx, tmp):
        np.save(tmp / "in.npy", _good_inputs(fx)["x"])
        return ["run", str(fx.package), "--inputs", str(tmp / "in.npy")], []
    case("run", "inputs a plain .npy")(_npy_file)
    x = np.zeros((1, 6, 16), np.float32)
    for name, value in [("NaN input", np.full_like(x, np.nan)), ("Inf input", np.full_like(x, np.inf)),
                        ("-Inf input", np.full_like(x, -np.inf)), ("string input", np.full(x.shape, "a")),
                        ("complex input", x.astype(np.complex64)), ("float64 input", x.astype(np.float64)),
                        ("int64 beyond float32", np.full(x.shape, 2 ** 40, np.int64)),
                        ("wrong shape", np.zeros((1, 7, 16), np.float32)),
                        ("wrong rank", np.zeros((6, 16), np.float32)),
                        ("empty array", np.zeros((0,), np.float32)),
                        ("huge shape", np.zeros((1, 6, 16 * 4096), np.float32))]:
        case("run", name)(lambda fx, tmp, v=value: (
            ["run", str(fx.package), "--inputs", str(_with_input(fx, tmp, "x", v))], []))

    def _missing_input(fx, tmp):
        arrays = _good_inputs(fx)
        del arrays["mask"]
        return ["run", str(fx.package), "--inputs", str(_npz(tmp / "in.npz", **arrays))], []
    case("run", "an input absent")(_missing_input)

    def _object_input(fx, tmp):
        arrays = _good_inputs(fx)
        arrays["x"] = np.empty(x.shape, object)
        np.savez(tmp / "in.npz", **arrays)
        return ["run", str(fx.package), "--inputs", str(tmp / "in.npz")], []
    case("run", "object (pickled) input")(_object_input)

    def _zip_bomb(fx, tmp):
        arrays = _good_inputs(fx)
        with zipfile.ZipFile(tmp / "in.npz", "w", zipfile.ZIP_DEFLATED) as z:
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.save(buf, arr if name != "x" else np.zeros((1, 6, 16 * 2 ** 16), np.float32))
                z.writestr(name + ".npy", buf.getvalue())
        return ["run", str(fx.package), "--inputs", str(tmp / "in.npz")], []
    case("run", "input inflating past its shape")(_zip_bomb)

    # ---- packages (through run, and inspect where it reads them) ----
    for name, data in [("package empty", b""), ("package text", b"hello\n"),
                       ("package random", bytes(range(256)) * 40)]:
        case("packages", name)(lambda fx, tmp, d=data: (_run(fx, package=_file(tmp, "p.tar", d)), []))
    case("packages", "package missing")(lambda fx, tmp: (_run(fx, package=tmp / "absent.tar"), []))
    case("packages", "package is a folder")(lambda fx, tmp: (_run(fx, package=tmp), []))
    case("packages", "package truncated")(
        lambda fx, tmp: (_run(fx, package=_file(tmp, "p.tar", fx.package.read_bytes()[:3000])), []))
    case("packages", "no manifest")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {k: v for k, v in _members(fx.package).items()
                                                                 if k != "manifest.json"})), []))
    case("packages", "manifest not JSON")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "manifest.json": b"{nope"},
                                                rehash=False)), []))
    case("packages", "manifest a list")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "manifest.json": b"[]"},
                                                rehash=False)), []))
    case("packages", "manifest deeply nested")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package),
                                                                "manifest.json": b"[" * 100000 + b"]" * 100000},
                                                rehash=False)), []))
    case("packages", "hash of a program wrong")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "programs/call_000.bin":
                                                                b"\0" * 64}, rehash=False)), []))
    case("packages", "member path escapes")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "../evil": b"x"})), []))
    case("packages", "absolute member path")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "/tmp/evil": b"x"})), []))
    case("packages", "symlink member")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", _members(fx.package),
                                                links={"lib/x.so": "/etc/passwd"})),
                         []))
    case("packages", "unlisted member")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "extra.txt": b"x"},
                                                rehash=False)), []))
    case("packages", "library missing")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {k: v for k, v in _members(fx.package).items()
                                                                 if k != "lib/model.so"})), []))
    case("packages", "library not a shared object")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "lib/model.so": b"\0" * 100})),
                         []))
    manifest_edits = [
        ("format other", _set(["format"], "zip")), ("format_version 99", _set(["format_version"], 99)),
        ("format_version a string", _set(["format_version"], "1")),
        ("calls missing", _delete(["calls"])), ("calls a dict", _set(["calls"], {})),
        ("inputs missing", _delete(["inputs"])), ("outputs missing", _delete(["outputs"])),
        ("config missing", _delete(["config"])), ("config a string", _set(["config"], "edge")),
        ("config name a path", _set(["config", "name"], "../../etc/passwd")),
        ("config values missing", _delete(["config", "values"])),
        ("config value wrong type", _set(["config", "values", "clock_ghz"], "fast")),
        ("config value negative", _set(["config", "values", "au_macs_per_cycle"], -128)),
        ("config fingerprint wrong", _set(["config", "fingerprint"], "0" * 32)),
        ("input dtype unknown", _set(["inputs", 0, "dtype"], "float128x")),
        ("input dtype object", _set(["inputs", 0, "dtype"], "object")),
        ("input shape negative", _set(["inputs", 0, "shape"], [1, -6, 16])),
        ("input shape a string", _set(["inputs", 0, "shape"], "1,6,16")),
        ("input shape huge", _set(["inputs", 0, "shape"], [1 << 20, 1 << 20, 16])),
        ("input name not a string", _set(["inputs", 0, "name"], 7)),
        ("input renamed", _set(["inputs", 0, "name"], "y")),
        ("output shape negative", _set(["outputs", 0, "shape"], [-1])),
        ("call program absent", _set(["calls", 0, "program"], "programs/none.bin")),
        ("call program a path", _set(["calls", 0, "program"], "../../etc/passwd")),
        ("call program not a string", _set(["calls", 0, "program"], 3)),
        ("call workload missing", _delete(["calls", 0, "workload"])),
        ("call workload heads a string", _set(["calls", 0, "workload", "heads"], "2")),
        ("call workload heads changed", _set(["calls", 0, "workload", "heads"], 3)),
        ("call workload seq_q zero", _set(["calls", 0, "workload", "seq_q"], 0)),
        ("call workload scale NaN-like", _set(["calls", 0, "workload", "scale"], "nan")),
        ("call params rounds garbage", _set(["calls", 0, "workload", "params", "rounds"], [[4]])),
        ("call schedule garbage", _set(["calls", 0, "schedule"], {"q_tile": -1})),
        ("call schedule a list", _set(["calls", 0, "schedule"], [1, 2])),
        ("call site not a string", _set(["calls", 0, "site"], {"a": 1})),
        ("call a number", _set(["calls", 0], 5)),
        ("compile_seconds a string", _set(["compile_seconds"], "fast")),
        ("model missing", _delete(["model"])), ("model path a number", _set(["model", "path"], 1)),
        ("target missing", _delete(["target"])), ("versions a list", _set(["versions"], [])),
        ("offloads missing", _delete(["offloads"])), ("offload a string", _set(["offload"], "yes")),
        ("host-only but with calls", _set(["offload"], False)),
        ("schedule_source unknown", _set(["calls", 0, "schedule_source"], "oracle")),
        ("schedule_record not hex", _set(["calls", 0, "schedule_record"], "../x")),
        ("schedule_objective unknown", _set(["calls", 0, "schedule_objective"], "latency")),
        ("params garbage", _set(["params"], {"rounds": "all"})),
        ("two calls share a site", _set(["calls", 1, "site"], "lv13")),
        ("host features a string", _set(["host", "features"], "avx2")),
        ("host feature not a name", _set(["host", "features"], ["avx2; rm -rf"])),
        ("host mcpu a number", _set(["host", "mcpu"], 7)),
        ("host fast_math a string", _set(["host", "fast_math"], "on")),
    ]
    for name, edit in manifest_edits:
        case("packages", f"manifest {name} (run)")(
            lambda fx, tmp, e=edit, n=name: (_run(fx, package=_edit_manifest(fx, tmp, e)), []))
        if name != "input renamed":  # inspect runs nothing: an input's name is the library's business
            case("inspect", f"manifest {name}")(
                lambda fx, tmp, e=edit: (["inspect", str(_edit_manifest(fx, tmp, e))], []))
    # a consistent manifest whose library needs a CPU feature this CPU lacks: refused before loading
    case("packages", "host library needs a feature this CPU lacks (run)")(
        lambda fx, tmp: (_run(fx, package=_edit_manifest(fx, tmp, _set(["host", "features"], ["avx10.2"]))), []))
    case("packages", "manifest files a list (run)")(
        lambda fx, tmp: (_run(fx, package=pack(tmp / "p.tar", {**_members(fx.package), "manifest.json": json.dumps(
            {**json.loads(_members(fx.package)["manifest.json"]), "files": []}).encode()}, rehash=False)), []))

    # ---- inspect: the other files it reads ----
    case("inspect", "missing")(lambda fx, tmp: (["inspect", str(tmp / "absent.tar")], []))
    case("inspect", "unknown suffix")(lambda fx, tmp: (["inspect", str(_file(tmp, "x.png", b"x"))], []))
    for name, data in [(".bin empty", b""), (".bin text", b"hello"), (".bin random", bytes(range(256)) * 8)]:
        case("inspect", name)(lambda fx, tmp, d=data: (["inspect", str(_file(tmp, "p.bin", d))], []))
    case("inspect", ".bin truncated")(
        lambda fx, tmp: (["inspect", str(_file(tmp, "p.bin", fx.program.read_bytes()[:200]))], []))
    case("inspect", ".bin one byte flipped")(
        lambda fx, tmp: (["inspect", str(_file(tmp, "p.bin", _flip(fx.program.read_bytes(), 100)))], []))
    for name, text in [(".asm empty", ""), (".asm garbage", "hello world\n"),
                       (".asm unknown mnemonic", ".config edge x\nFROB r1\n"), (".asm binary", "\0\1\2\3")]:
        case("inspect", name)(lambda fx, tmp, t=text: (["inspect", str(_file(tmp, "p.asm", t.encode()))], []))
    case("inspect", ".asm operand out of range")(
        lambda fx, tmp: (["inspect", str(_file(tmp, "p.asm", _asm_edit(fx.asm.read_text(), "token=",
                                                                         "token=99")))], []))
    case("inspect", ".asm fingerprint of no config")(
        lambda fx, tmp: (["inspect", str(_file(tmp, "p.asm", _asm_edit(fx.asm.read_text(), ".config edge",
                                                                         ".config edge " + "0" * 32 + " ;")))], []))

    # ---- binaries: a program inside a package, edited consistently (hashes recomputed) ----
    for name, edit in [("magic wrong", _program_field(0, b"XXXX")), ("version 99", _program_field(4, b"\x63\x00")),
                       ("truncated", lambda b: b[: len(b) // 2]), ("empty", lambda b: b""),
                       ("trailing bytes", lambda b: b + b"\0" * 33), ("byte flipped", lambda b: _flip(b, len(b) // 2)),
                       ("code byte flipped, checksum recomputed", lambda b: _rechecksummed(_flip(b, len(b) - 40)))]:
        case("binaries", f"program {name} (run)")(
            lambda fx, tmp, e=edit: (_run(fx, package=_edit_program(fx, tmp, e)), []))
        case("binaries", f"program {name} (inspect)")(
            lambda fx, tmp, e=edit: (["inspect", str(_file(tmp, "p.bin", e(fx.program.read_bytes())))], []))

    # ---- tune ----
    case("tune", "missing model")(lambda fx, tmp: _tune(fx, tmp, model=tmp / "absent.onnx"))
    case("tune", "model random bytes")(lambda fx, tmp: _tune(fx, tmp, model=_file(tmp, "m.onnx", bytes(range(256)))))
    for name, extra in [("--trials 0", ["--trials", "0"]), ("--trials -5", ["--trials", "-5"]),
                        ("--trials x", ["--trials", "x"]), ("--tuner bogus", ["--tuner", "bogus"]),
                        ("--early-stopping 0", ["--early-stopping", "0"]), ("--seed -1", ["--seed", "-1"]),
                        ("--dask-scheduler not an address", ["--dask-scheduler", "not an address"]),
                        ("--target-energon-config nosuch", ["--target-energon-config", "nosuch"]),
                        ("--target-energon-policy bogus", ["--target-energon-policy", "bogus"]),
                        ("--target-energon-topk without its policy", ["--target-energon-topk", "0.5"]),
                        ("--target-energon-sanger 2", policy("sanger", "--target-energon-sanger", "2")),
                        ("--target-energon-gap, policy topk", policy("topk", "--target-energon-gap", "8,4"))]:
        case("tune", name)(lambda fx, tmp, e=extra: _tune(fx, tmp, *e))
    case("tune", "--calibration missing")(lambda fx, tmp: _tune(fx, tmp, "--calibration", str(tmp / "c.npz")))
    case("tune", "--calibration text")(lambda fx, tmp: _tune(fx, tmp, "--calibration", str(_file(tmp, "c.npz", b"x"))))
    case("tune", "--calibration NaN")(
        lambda fx, tmp: _tune(fx, tmp, "--calibration",
                              str(_with_input(fx, tmp, "x", np.full(x.shape, np.nan, np.float32)))))
    case("tune", "-o in a missing folder")(
        lambda fx, tmp: (["tune", str(fx.model), "-o", str(tmp / "no" / "r.jsonl"), "--trials", "2"],
                         [tmp / "no" / "r.jsonl"]))
    case("tune", "-o is a folder")(lambda fx, tmp: (["tune", str(fx.model), "-o", str(tmp), "--trials", "2"], []))
    case("tune", "-o holds garbage records")(
        lambda fx, tmp: (["tune", str(fx.model), "-o", str(_file(tmp, "r.jsonl", b"\xff\xfe garbage\n")),
                          "--trials", "2"], []))
    # ---- tune --host and compile --tuning-records FOLDER: the host kernels' MetaSchedule database ----
    for name, extra in [("--host without --host-trials", []), ("--host-trials 0", ["--host-trials", "0"]),
                        ("--host with --trials", ["--host-trials", "4", "--trials", "4"]),
                        ("--host with --calibration", ["--host-trials", "4", "--calibration", "c.npz"]),
                        ("--host --seed -1", ["--host-trials", "4", "--seed", "-1"])]:
        case("tune", name)(lambda fx, tmp, e=extra: _tune_host(fx, tmp, *e))
    case("tune", "--host-trials without --host")(lambda fx, tmp: _tune(fx, tmp, "--host-trials", "4"))
    case("tune", "--host -o a file")(
        lambda fx, tmp: (["tune", str(fx.model), "-o", str(_file(tmp, "db", b"x")), "--host", "--host-trials", "4"],
                         []))
    case("tune", "--host -o in a missing folder")(
        lambda fx, tmp: (["tune", str(fx.model), "-o", str(tmp / "no" / "db"), "--host", "--host-trials", "4"],
                         [tmp / "no" / "db"]))
    for name, workloads, records in [("empty", None, None), ("without its records", "", None),
                                     ("records not JSON", '["1", "x"]\n', "\xff not json\n"),
                                     ("workloads not lists", '{"a": 1}\n', "")]:
        case("compile", f"--tuning-records host database {name}")(
            lambda fx, tmp, w=workloads, r=records: _compile(fx, tmp, "--tuning-records", str(_host_db(tmp, w, r))))
    case("compile", "--tuning-records two host databases")(
        lambda fx, tmp: _compile(fx, tmp, "--tuning-records", str(_host_db(tmp, None, None)), "--tuning-records",
                                 str(tmp)))
    # ---- compile --target-energon-thresholds: the thresholds file ----
    def thresholds_case(name, edit=None, extra=(), compiles=False):
        case("compile", f"--target-energon-thresholds {name}", compiles)(
            lambda fx, tmp: _compile(fx, tmp, "--target-energon-thresholds", str(_thresholds(fx, tmp, edit)), *extra))

    case("compile", "--target-energon-thresholds missing")(
        lambda fx, tmp: _compile(fx, tmp, "--target-energon-thresholds", str(tmp / "absent.json")))
    case("compile", "--target-energon-thresholds not JSON")(
        lambda fx, tmp: _compile(fx, tmp, "--target-energon-thresholds", str(_file(tmp, "t.json", b"\xff{"))))
    thresholds_case("another kind of JSON", lambda r: {"format": "energon-package", "sites": []})
    thresholds_case("a JSON list", lambda r: [r])
    thresholds_case("version 2", _set(["version"], 2))
    thresholds_case("gap out of range", _set(["sites", 0, "values", 0, 0], 1000.0))
    thresholds_case("gap off the fixed-point grid", _set(["sites", 0, "values", 0, 0], 0.01))
    thresholds_case("values of one head too few", _set(["sites", 0, "values", 0], [6.0]))
    thresholds_case("kept ratio rising", _set(["sites", 0, "kept_ratio", 1, 0], 0.9))
    thresholds_case("unknown field", _set(["sites", 0, "colour"], "red"))
    thresholds_case("no model record", _delete(["model"]))
    thresholds_case("another model's digest", _set(["model", "sha256"], "0" * 64))
    thresholds_case("rounds differ from --target-energon-rounds", extra=("--target-energon-rounds", "4x4,4x4"))
    thresholds_case("with --target-energon-gap", extra=("--target-energon-gap", "4,2"))
    thresholds_case("with --target-energon-rule", extra=("--target-energon-rule", "mpmrf"))
    thresholds_case("with --target-energon-rounds none", extra=("--target-energon-rounds", "none"))
    thresholds_case("with --target llvm", extra=("--target", "llvm"))
    thresholds_case("with --target-energon-policy topk", extra=("--target-energon-policy", "topk"))
    thresholds_case("with --target-energon-sanger", extra=("--target-energon-sanger", "0.1"))
    thresholds_case("a site the model lacks", _set(["sites", 1, "name"], "lv99"), compiles=True)
    thresholds_case("a site of the model missing", lambda r: r["sites"].pop() and None, compiles=True)
    thresholds_case("a head count that differs", lambda r: r["sites"][0].update(
        heads=3, values=[[6.0, 8.0, 6.0], [4.0, 4.0, 4.0]], mass_mean=[0.99] * 3, mass_p10=[0.95] * 3, rows=[6] * 3,
        kept_ratio=[[0.8] * 3, [0.6] * 3]), compiles=True)

    # ---- calibrate ----
    for name, extra in [("--target-energon-quality 0", ["--target-energon-quality", "0"]),
                        ("--target-energon-quality 1.5", ["--target-energon-quality", "1.5"]),
                        ("--target-energon-quality nan", ["--target-energon-quality", "nan"]),
                        ("--target-energon-quality text", ["--target-energon-quality", "high"]),
                        ("--target-energon-rule bogus", ["--target-energon-rule", "max"]),
                        ("--target-energon-rule topk (a policy)", ["--target-energon-rule", "topk"]),
                        ("--target-energon-rule sanger (a policy)", ["--target-energon-rule", "sanger"]),
                        ("--target-energon-policy (not a calibrate option)", policy("topk")),
                        ("--target-energon-rounds none", ["--target-energon-rounds", "none"]),
                        ("--target-energon-rounds bad", ["--target-energon-rounds", "4y2"]),
                        ("--target-energon-config nosuch", ["--target-energon-config", "nosuch"]),
                        ("--input-shapes bad", ["--input-shapes", "x:[1,"])]:
        case("calibrate", name)(lambda fx, tmp, e=extra: _calibrate(fx, tmp, *e))
    case("calibrate", "missing model")(
        lambda fx, tmp: (["calibrate", str(tmp / "absent.onnx"), "--calibration", str(fx.inputs), "-o",
                          str(tmp / "t.json")], [tmp / "t.json"]))
    case("calibrate", "--calibration missing")(lambda fx, tmp: _calibrate(fx, tmp, inputs=tmp / "absent.npz"))
    case("calibrate", "-o in a missing folder")(
        lambda fx, tmp: (["calibrate", str(fx.model), "--calibration", str(fx.inputs), "-o",
                          str(tmp / "no" / "t.json")], [tmp / "no" / "t.json"]))
    case("calibrate", "-o is a folder")(
        lambda fx, tmp: (["calibrate", str(fx.model), "--calibration", str(fx.inputs), "-o", str(tmp)], []))
    case("calibrate", "--calibration text", compiles=True)(
        lambda fx, tmp: _calibrate(fx, tmp, inputs=_file(tmp, "c.npz", b"x")))
    case("calibrate", "--calibration NaN", compiles=True)(
        lambda fx, tmp: _calibrate(fx, tmp, inputs=_npz(tmp / "c.npz", x=np.full((3, 1, 6, 16), np.nan, np.float32),
                                                        mask=np.zeros((3, 1, 1, 1, 6), np.float32))))

    # which cases get as far as importing the model: the compile and tune cases whose bad input is in
    # an option the command can only check after reading the model, or the model itself
    slow = {"compile": {"graph reads an undefined tensor", "dynamic dim without --input-shapes", "truncated .onnx",
                        "--dump-offloads into a missing folder", "--tuning-records binary",
                        "--tuning-records a JSON list"},
            "tune": {"--calibration NaN", "-o holds garbage records", "--dask-scheduler not an address"}}
    return [Case(c.surface, c.name, c.build, c.compiles or c.surface in ("compile", "tune") and
                 (c.name.startswith("--input-shapes") or c.name in slow.get(c.surface, ())), c.timeout)
            for c in cases]


def _flip(blob: bytes, at: int) -> bytes:
    at = min(max(at, 0), len(blob) - 1)
    return blob[:at] + bytes([blob[at] ^ 0x5A]) + blob[at + 1:]


def _asm_edit(text: str, old: str, new: str) -> str:
    return text.replace(old, new, 1) if old in text else text + f"\n{new}\n"


CASES: tuple[Case, ...] = tuple(_cases())


# -- running a case --------------------------------------------------------------------------------------
class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout()


def run_case(case: Case, fx: Fixtures, scratch: Path) -> Outcome:
    """Run ``case`` in this process and classify what came back (see the module docstring)."""
    from energon_tvm.tvmc.main import main

    scratch.mkdir(parents=True, exist_ok=True)
    argv, outputs = case.build(fx, scratch)
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(case.timeout)
    code: int | None = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code if isinstance(exit_.code, int) else 1
    except _Timeout:
        return Outcome(case, "hang", None, "", f"no answer within {case.timeout} s")
    except BaseException as exc:  # noqa: BLE001 - what escapes is the finding
        return Outcome(case, "traceback", None, f"{type(exc).__name__}: {exc}"[:300],
                       "".join(traceback.format_exception(exc))[-2000:])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if "Traceback (most recent call last)" in err.getvalue():
        return Outcome(case, "traceback", code, last, err.getvalue()[-2000:])
    if code == 0:
        return Outcome(case, "accepted", code, last, out.getvalue()[-500:])
    if not (last.startswith("tvmc: error: ") or (last.startswith("tvmc ") and ": error: " in last)):
        return Outcome(case, "traceback", code, last, "failed without a one-line error:\n" + err.getvalue()[-2000:])
    left = [str(p) for p in outputs if p.exists()]
    if left:
        return Outcome(case, "leftover", code, last, "left behind: " + ", ".join(left))
    return Outcome(case, "clean", code, last)
