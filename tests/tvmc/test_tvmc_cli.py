"""tvmc end to end through the command line, the Python API it mirrors, and every user-error path."""

import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from energon_tvm.tvmc import PackageError, read_package, run_package
from energon_tvm.tvmc.main import main


def tvmc(*args, cwd=None):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "energon_tvm.tvmc", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def test_compile_inspect_run_through_the_cli(model_files):
    root = model_files
    out = tvmc("compile", root / "model.onnx", "-o", root / "cli.tar", "--dump-code", "isa,relax",
               "--dump-offloads", "-", "--target-energon-alpha", "0,0")
    assert out.returncode == 0, out.stderr
    assert "2 of 2 attention site(s) offloaded" in out.stdout
    assert (root / "cli.tar.isa" / "call_000.asm").read_text().count("f.score") >= 2
    assert "R.call_dps_packed" in (root / "cli.tar.relax.py").read_text()

    out = tvmc("inspect", root / "cli.tar")
    assert out.returncode == 0, out.stderr
    assert "estimated cycles: at most" in out.stdout and "ld.kv" in out.stdout

    out = tvmc("run", root / "cli.tar", "--inputs", root / "inputs.npz", "--outputs", root / "cli_out.npz",
               "--profile", "--print-time", "--trace", root / "trace.json", "--report", root / "report.html")
    assert out.returncode == 0, out.stderr
    assert "kept ratio per round" in out.stdout and "host wall time" in out.stdout
    trace = json.loads((root / "trace.json").read_text())
    names = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert names >= {"A.ATTN", "F.SCORE"} and names & {"LD.KV", "LD.KVR"}, names  # gathered K/V, chunked or resident
    html = (root / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "Offloaded calls" in html

    # the command line's outputs equal the Python API's
    api = run_package(root / "cli.tar", inputs=root / "inputs.npz")
    with np.load(root / "cli_out.npz") as z:
        assert sorted(z.files) == sorted(api.outputs)
        for name in z.files:
            np.testing.assert_array_equal(z[name], api.outputs[name])
    # with every round keeping every key (dense INT16), the offloaded model agrees with an llvm-only build
    # of the same model up to INT16 quantisation
    for target, alpha, name in (("llvm", None, "host.tar"), ("energon, llvm", "-1,-1", "dense.tar")):
        out = tvmc("compile", root / "model.onnx", "-o", root / name, "--target", target,
                   *([f"--target-energon-alpha={alpha}"] if alpha else []))
        assert out.returncode == 0, out.stderr
    host = run_package(root / "host.tar", inputs=root / "inputs.npz")
    dense = run_package(root / "dense.tar", inputs=root / "inputs.npz")
    assert host.calls == [] and len(dense.calls) == 2
    for name, value in dense.outputs.items():
        ref = host.outputs[name]
        assert np.abs(value - ref).max() <= 1e-3 * np.abs(ref).max()


def test_user_error_exits_non_zero_without_a_traceback(model_files):
    out = tvmc("compile", model_files / "missing.onnx", "-o", model_files / "x.tar")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"tvmc: error: model file '{model_files / 'missing.onnx'}' does "
                                               f"not exist"]


@pytest.mark.parametrize("args, message", [
    (["compile", "{root}/missing.onnx", "-o", "{root}/x.tar"], "does not exist"),
    (["compile", "{root}/inputs.npz", "-o", "{root}/x.tar"], "cannot tell the format"),
    (["compile", "{root}/inputs.npz", "-o", "{root}/x.tar", "--model-format", "onnx"], "not a readable ONNX model"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--input-shapes", "x:[1,6"], "bad --input-shapes"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--input-shapes", "y:[1,6,16]"], "does not take"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--target", "energon, cuda"], "unknown target kind"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--target", "energon"], "no host target"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--target-energon-config", "cloud"],
     "no hardware config named 'cloud'"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--target-energon-alpha", "0.5"], "gives 1 value"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--target-energon-alpha", "0,2"], "alpha = 2.0"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--dump-code", "asm"], "unknown --dump-code"),
    (["compile", "{root}/model.onnx", "-o", "{root}/x.tar", "--target-llvm-mcpu", "pentium-9000"],
     "is not a CPU LLVM knows"),
    (["run", "{root}/missing.tar"], "does not exist"),
    (["run", "{root}/model.onnx"], "not a readable tar archive"),
    (["run", "{root}/model.tar", "--inputs", "{root}/missing.npz"], "does not exist"),
    (["run", "{root}/model.tar", "--repeat", "0"], "must be at least 1"),
    (["inspect", "{root}/missing.bin"], "does not exist"),
])
def test_every_user_error_is_one_line(model_files, package, capsys, args, message):
    assert main([a.format(root=model_files) for a in args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error: ") and message in err[0], err


def test_inputs_that_do_not_match_the_package(model_files, package, capsys):
    np.savez(model_files / "bad.npz", x=np.zeros((1, 7, 16), np.float32), mask=np.zeros((1, 1, 1, 6), np.float32))
    assert main(["run", str(package), "--inputs", str(model_files / "bad.npz")]) == 1
    assert "input 'x' has shape [1, 7, 16]; the package was compiled for [1, 6, 16]" in capsys.readouterr().err
    np.savez(model_files / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    assert main(["run", str(package), "--inputs", str(model_files / "objects.npz")]) == 1
    assert "not a readable .npz of plain arrays" in capsys.readouterr().err


def _rewrite(src, dst, edit):
    """Copy a package tar, letting ``edit(name, data)`` change members; it may return extra TarInfos."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        extras = []
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            data, more = edit(member.name, data)
            extras += more
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
        for info, data in extras:
            tout.addfile(info, io.BytesIO(data) if data is not None else None)


def _flip_program_byte(name, data):
    if name == "programs/call_000.bin":
        data = data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
    return data, []


def _dotdot(name, data):
    extra = []
    if name == "manifest.json":
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 4
        extra.append((info, b"oops"))
    return data, extra


def _symlink(name, data):
    extra = []
    if name == "manifest.json":
        info = tarfile.TarInfo("programs/call_999.bin")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        extra.append((info, None))
    return data, extra


def _version(name, data):
    if name == "manifest.json":
        doc = json.loads(data)
        doc["format_version"] = 99
        data = json.dumps(doc).encode()
    return data, []


@pytest.mark.parametrize("edit, message", [
    (_flip_program_byte, "does not match its hash in the manifest"),
    (_dotdot, "unsafe path"),
    (_symlink, "is a link"),
    (_version, "package format version 99"),
])
def test_tampered_packages_are_rejected(tmp_path, package, capsys, edit, message):
    bad = tmp_path / "pkgs" / "bad.tar"
    bad.parent.mkdir()
    _rewrite(package, bad, edit)
    with pytest.raises(PackageError, match=message):
        read_package(bad, library_dir=tmp_path / "pkgs")
    assert main(["run", str(bad)]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists()
    assert sorted(p.name for p in (tmp_path / "pkgs").iterdir()) == ["bad.tar"]  # nothing extracted


def test_negative_option_values_need_no_equals_sign(model_files, capsys):
    from energon_tvm.tvmc.main import _attach_negative_values

    assert _attach_negative_values(["compile", "m.onnx", "--target-energon-alpha", "-1,-0.5", "-v"]) == \
        ["compile", "m.onnx", "--target-energon-alpha=-1,-0.5", "-v"]
    assert _attach_negative_values(["--repeat", "-1"]) == ["--repeat=-1"]
    assert _attach_negative_values(["-o", "-1"]) == ["-o", "-1"]  # short options: argparse's own rule
    out = model_files / "negative.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out), "--target-energon-alpha", "-1,-1"]) == 0
    assert "alpha=-1" in capsys.readouterr().out
