"""The host build for the compiling CPU's x86-64 level: the level read from a CPU's flags, the manifest's
record of it, the refusal of a CPU that lacks a feature the library needs, and the portable build."""

import json
import tarfile

import numpy as np
import pytest
from census import pack

from energon_tvm import host
from energon_tvm.tvmc import compile_model, read_package, run_package, write
from energon_tvm.tvmc.errors import PackageError
from energon_tvm.tvmc.main import main
from energon_tvm.tvmc.manifest import check_schema
from energon_tvm.tvmc.runner import PackageSession

#: the Linux flags of CPUs at each level (what /proc/cpuinfo lists; the psABI's definitions)
BASE = frozenset("fpu tsc cx8 cmov mmx fxsr sse sse2 syscall nx lm".split())
V2 = BASE | frozenset("pni ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm".split())
V3 = V2 | frozenset("avx avx2 bmi1 bmi2 f16c fma abm movbe xsave".split())
V4 = V3 | frozenset("avx512f avx512bw avx512cd avx512dq avx512vl".split())


@pytest.mark.parametrize("flags, level", [
    (BASE, "x86-64"), (V2, "x86-64-v2"), (V3, "x86-64-v3"), (V4, "x86-64-v4"),
    (V3 - {"fma"}, "x86-64-v2"),         # one feature short of v3
    (V4 - {"avx512vl"}, "x86-64-v3"),    # AVX-512F without VL (Knights Landing): not v4
    (V2 - {"lahf_lm"} | (V4 - V2), "x86-64"),  # everything above v2 but one of v2's own: no level at all
])
def test_the_level_is_the_highest_whose_features_the_flags_have(flags, level):
    assert host.cpu_level(flags) == level
    assert host.default_mcpu(flags) == level  # this LLVM knows every level


def test_the_flags_are_read_from_cpuinfo_text():
    text = ("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre_v1\n\n"
            "processor\t: 1\nflags\t\t: fpu sse2\n")
    assert host.cpu_flags(text) == {"fpu", "sse2", "avx2", "fma"}  # the first CPU's
    assert host.cpu_flags("processor\t: 0\nFeatures\t: fp asimd\n") is None  # an Arm CPU: no x86 flags
    assert host.default_mcpu(frozenset()) == "x86-64"  # flags read, no level


@pytest.mark.parametrize("level", [name for name, _ in host.LEVELS])
def test_the_levels_features_are_llvms(level):
    # the declared psABI table against LLVM's own definition of the CPU (what the code may use)
    assert host.level_features(level) == host.required_features(level)
    assert set(host.required_features(level)) <= host.cpu_features(V4)


def test_a_named_cpu_needs_what_llvm_gives_it():
    need = host.required_features("skylake-avx512")
    assert {"avx512f", "avx512vl", "fma", "avx2"} <= set(need) and "avx512fp16" not in need
    assert host.required_features("x86-64") == () and host.required_features(None) == ()


def test_the_manifest_records_the_detected_level(package):
    manifest = read_package(package).manifest  # read back and checked against the schema
    want = host.HostCPU.for_build(host.default_mcpu(), detected=True)
    assert manifest["host"] == want.to_dict()
    assert host.HostCPU.from_dict(manifest["host"]) == want
    assert manifest["target"].endswith(f"llvm ({want.mcpu})")


def test_the_host_field_is_optional_and_typed(package, tmp_path):
    manifest = read_package(package).manifest
    old = {k: v for k, v in manifest.items() if k != "host"}
    check_schema(tmp_path / "old.tar", old)  # packages written before the field still read
    for bad, what in (({"mcpu": "x86-64-v3", "features": "avx2"}, "manifest.host.features is 'avx2'"),
                      ({"mcpu": "x86-64-v3", "features": ["AVX2;"]}, "manifest.host.features[0]"),
                      ({"mcpu": 3, "features": []}, "manifest.host.mcpu is 3")):
        with pytest.raises(PackageError, match=what.replace("[", r"\[").replace("]", r"\]")):
            check_schema(tmp_path / "bad.tar", dict(manifest, host=bad))


def test_a_cpu_without_a_needed_feature_is_refused_before_loading(package, monkeypatch):
    import tvm

    need = host.HostCPU.from_dict(read_package(package).manifest["host"])
    if not need.features:
        pytest.skip("this machine's level is the portable one: nothing to lack")

    def no_load(*_args, **_kwargs):
        raise AssertionError("the library was loaded")

    monkeypatch.setattr(tvm.runtime, "load_module", no_load)
    lacking = V4 - {"avx2"}  # a CPU with every level's features but avx2 (injected, not global state)
    with pytest.raises(host.HostCPUError) as err:
        PackageSession(package, cpu_flags=lacking)
    assert str(err.value) == (f"{package}: package built for {need.mcpu} (needs {', '.join(need.features)}); this "
                              f"CPU lacks avx2: recompile with --target-llvm-mcpu x86-64")


def _requiring(src, dst, feature):
    """The package at ``src`` with ``feature`` added to what its manifest says the library needs (the
    hashes kept consistent, as anyone who edits a package can)."""
    with tarfile.open(src) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    manifest = json.loads(members["manifest.json"])
    manifest["host"] = dict(manifest["host"], features=[*manifest["host"]["features"], feature])
    members["manifest.json"] = json.dumps(manifest, indent=1, sort_keys=True).encode()
    return pack(dst, members)


def test_tvmc_run_refuses_in_one_line(package, tmp_path, capsys):
    pkg = _requiring(package, tmp_path / "future.tar", "avx10.2")  # a feature no CPU of today lists
    assert main(["run", str(pkg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tvmc: error: {pkg}: package built for "), err
    assert err[0].endswith("; this CPU lacks avx10.2: recompile with --target-llvm-mcpu x86-64")


def test_the_portable_build_and_a_v3_build_compute_the_same(model_files, tmp_path):
    portable = compile_model(model_files / "model.onnx", mcpu="x86-64")
    assert portable.manifest()["host"] == {"mcpu": "x86-64", "features": [], "detected": False, "fast_math": False}
    v3 = compile_model(model_files / "model.onnx", mcpu="x86-64-v3")
    assert v3.manifest()["host"] == {"mcpu": "x86-64-v3", "features": list(host.level_features("x86-64-v3")),
                                     "detected": False, "fast_math": False}
    paths = {}
    for name, result in (("portable", portable), ("v3", v3)):
        paths[name] = tmp_path / f"{name}.tar"
        write(result, paths[name])
    runs = {name: run_package(p, inputs=model_files / "inputs.npz", backend="reference") for name, p in paths.items()}
    # FMA contraction and AVX reassociation move the last bits only
    for name, value in runs["portable"].outputs.items():
        np.testing.assert_allclose(runs["v3"].outputs[name], value, rtol=1e-5, atol=1e-6)


def test_a_fast_math_build_says_so_and_stays_close(model_files, package, tmp_path):
    """--target-llvm-fast-math on: the manifest and the target string record it; a package of an older
    release (no fast_math in its host record) reads as exact; the outputs stay near the exact build's."""
    result = compile_model(model_files / "model.onnx", fast_math="on")
    manifest = result.manifest()
    assert manifest["host"]["fast_math"] is True and manifest["target"].endswith(", fast-math)")
    assert host.HostCPU.from_dict({k: v for k, v in manifest["host"].items() if k != "fast_math"}).fast_math is False
    write(result, tmp_path / "fast.tar")
    assert read_package(tmp_path / "fast.tar").manifest["host"]["fast_math"] is True
    fast, exact = (run_package(p, inputs=model_files / "inputs.npz", backend="reference").outputs
                   for p in (tmp_path / "fast.tar", package))
    for name, value in exact.items():
        np.testing.assert_allclose(fast[name], value, rtol=1e-5, atol=1e-5)
    assert main(["compile", str(model_files / "model.onnx"), "--target-llvm-fast-math", "maybe",
                 "-o", str(tmp_path / "x.tar")]) == 1
