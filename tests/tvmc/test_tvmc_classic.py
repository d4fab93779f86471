"""Classic tvmc's forms: --input-shapes with spaces, -i/-o, --number/--repeat/--print-time, --print-top,
--pass-config and -O; every option checked before any work; a failing command leaves no file behind."""

import statistics

import numpy as np
import pytest

from energon_tvm.tvmc import read_package, run_package
from energon_tvm.tvmc.errors import TVMCError
from energon_tvm.tvmc.main import build_parser, main
from energon_tvm.tvmc.shapes import format_input_shapes, parse_input_shapes


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error: "), err
    return err[0]


# -- --input-shapes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "input_ids:[1,128],attention_mask:[1,128]",
    "input_ids:[1,128] attention_mask:[1,128]",
    "  input_ids : [1, 128]   attention_mask:[1,128]  ",
    "input_ids:[1,128], attention_mask:[1,128]",
])
def test_both_shape_forms_give_the_same_shapes(text):
    assert parse_input_shapes(text) == {"input_ids": (1, 128), "attention_mask": (1, 128)}


def test_shape_names_may_hold_colons_and_the_comma_form_reads_back():
    shapes = parse_input_shapes("input:0:[1,3,224,224] scalar:[] b:[2]")
    assert shapes == {"input:0": (1, 3, 224, 224), "scalar": (), "b": (2,)}
    assert parse_input_shapes(format_input_shapes(shapes)) == shapes
    assert parse_input_shapes(None) == {} and parse_input_shapes("  ") == {}


@pytest.mark.parametrize("text, message", [
    ("x:[1,6", "at character 0"),
    ("x:[1,6]y:[2]", "at character 7: expected ',' or a space"),
    ("x:[1,-1]", "dynamic dimension (-1)"),
    ("x:[1,?]", "dynamic dimension (?)"),
    ("x:[1,0]", "below 1"),
    ("x:[1,a]", "must be integers"),
    ("x:[1] x:[2]", "'x' is given twice"),
    ("x:[1],,y:[2]", "at character 6"),
])
def test_bad_shapes_name_what_is_wrong(text, message):
    with pytest.raises(TVMCError) as err:
        parse_input_shapes(text)
    assert message in str(err.value) and str(err.value).startswith("bad --input-shapes"), str(err.value)


def test_classic_shapes_fix_a_dynamic_model(dynamic_model, model_files, package, capsys):
    out = model_files / "dynamic.tar"
    assert main(["compile", str(dynamic_model), "-o", str(out)]) == 1
    assert "has dynamic dimensions" in _one_error_line(capsys)
    assert not out.exists()
    assert main(["compile", str(dynamic_model), "-o", str(out), "--input-shapes", "x:[1,6,16] mask:[1,1,1,6]"]) == 0
    capsys.readouterr()
    assert {i["name"]: i["shape"] for i in read_package(out).manifest["inputs"]} == {"x": [1, 6, 16],
                                                                                      "mask": [1, 1, 1, 6]}
    # the same model at the same shapes as the static one: the same outputs, bit for bit
    fixed, static = (run_package(p, inputs=model_files / "inputs.npz") for p in (out, package))
    for name, value in static.outputs.items():
        np.testing.assert_array_equal(fixed.outputs[name], value)


# -- tvmc run ---------------------------------------------------------------------------------------
def test_short_input_output_aliases(model_files, package, tmp_path, capsys):
    out = tmp_path / "out.npz"
    assert main(["run", str(package), "-i", str(model_files / "inputs.npz"), "-o", str(out)]) == 0
    api = run_package(package, inputs=model_files / "inputs.npz")
    with np.load(out) as z:
        assert sorted(z.files) == sorted(api.outputs)
        for name in z.files:
            np.testing.assert_array_equal(z[name], api.outputs[name])


def test_number_and_repeat_measure_as_classic_tvmc(package, monkeypatch):
    from energon_tvm.tvmc import runner

    runs = []
    real = runner.PackageSession.run

    def counted(self, feeds, **kwargs):
        runs.append(kwargs)
        return real(self, feeds, **kwargs)

    monkeypatch.setattr(runner.PackageSession, "run", counted)
    result = run_package(package, number=2, repeat=3, trace=True)
    assert len(runs) == 6 and len(result.wall_seconds) == 3 and result.number == 2
    # only the first run collects statistics and the trace
    assert [r["collect"] for r in runs] == [True] + [False] * 5 and [r["trace"] for r in runs] == [True] + [False] * 5
    assert len(result.calls) == 2 and all("trace" in c.stats for c in result.calls)


def test_time_summary_is_the_classic_table():
    from energon_tvm.tvmc.runner import time_summary

    seconds = [0.010, 0.012, 0.011, 0.020]
    ms = [s * 1e3 for s in seconds]
    t = time_summary(seconds)
    assert t["mean"] == pytest.approx(statistics.fmean(ms), rel=1e-12)
    assert t["median"] == pytest.approx(statistics.median(ms), rel=1e-12)
    assert t["std"] == pytest.approx(statistics.pstdev(ms), rel=1e-12)
    assert (t["max"], t["min"]) == (pytest.approx(20.0), pytest.approx(10.0))


def test_print_time_prints_one_row_of_the_repeat_measurements(package, capsys):
    assert main(["run", str(package), "--print-time", "--number", "2", "--repeat", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "host wall time: 3 measurement(s) of 2 run(s) each"
    assert lines[1].split() == ["mean", "(ms)", "median", "(ms)", "max", "(ms)", "min", "(ms)", "std", "(ms)"]
    mean, median, hi, lo, std = map(float, lines[2].split())
    assert lo <= median <= hi and lo <= mean <= hi and std >= 0 and lo > 0


def test_print_top_lists_the_slowest_calls(package, model_files, capsys):
    from energon_tvm.schedules.bounds import BINDS

    assert main(["run", str(package), "-i", str(model_files / "inputs.npz"), "--print-top", "1", "--profile"]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["call", "site"])
    profile = {}
    for line in out[header + 1:]:
        fields = line.split()
        if fields[0] == "all":
            break
        profile[int(fields[0])] = int(fields[2].replace(",", ""))
    top_at = next(i for i, line in enumerate(out) if line == "the 1 slowest of 2 accelerator call(s):")
    assert out[top_at + 1].split()[:4] == ["rank", "call", "site", "cycles"]
    rank, call, _site, cycles, ratio, binds = out[top_at + 2].split()[:6]
    result = run_package(package, inputs=model_files / "inputs.npz")
    slowest = max(range(len(result.calls)), key=lambda i: result.calls[i].stats["cycles"])
    assert (rank, int(call)) == ("1", slowest)
    assert int(cycles.replace(",", "")) == result.calls[slowest].stats["cycles"] == profile[slowest]
    assert ratio.endswith("x") and float(ratio[:-1]) >= 1.0 and binds in BINDS
    assert len(out) == top_at + 3  # exactly N rows


def test_print_top_of_a_host_only_package_says_so(model_files, tmp_path, capsys):
    out = tmp_path / "host.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out), "--target", "llvm"]) == 0
    capsys.readouterr()
    assert main(["run", str(out), "--print-top", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == ["--print-top: the package offloads no call; everything ran on "
                                                    "the host"]


def test_profile_labels_bytes_in_binary_units(package, capsys):
    assert main(["run", str(package), "--profile"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "DRAM KiB" in header and "KB " not in header


# -- tvmc compile: --pass-config, -O ----------------------------------------------------------------
def test_pass_config_and_opt_level_reach_the_host_build(model_files, package, tmp_path, monkeypatch, capsys):
    import tvm

    from energon_tvm import host

    seen = []
    real = host.build

    def recording(mod, mcpu=None, **options):
        ctx = tvm.transform.PassContext.current()
        seen.append((ctx.opt_level, {k: bool(v) for k, v in ctx.config.items()}))
        return real(mod, mcpu, **options)

    monkeypatch.setattr(host, "build", recording)
    out = tmp_path / "o0.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out), "-O0",
                 "--pass-config", "tirx.disable_vectorize=true", "--pass-config", "tirx.noalias=0"]) == 0
    capsys.readouterr()
    assert seen == [(0, {"tirx.disable_vectorize": True, "tirx.noalias": False})]
    assert read_package(out).manifest["build"] == {"opt_level": 0, "pass_config": {"tirx.disable_vectorize": True,
                                                                                    "tirx.noalias": False}}
    # the unvectorised -O0 build computes what the default build does
    a, b = (run_package(p, inputs=model_files / "inputs.npz") for p in (out, package))
    for name, value in b.outputs.items():
        np.testing.assert_allclose(a.outputs[name], value, rtol=1e-5, atol=1e-6)
    assert read_package(package).manifest["build"] == {"opt_level": 2, "pass_config": {}}


@pytest.mark.parametrize("args, message", [
    (["--pass-config", "tirx.disable_vectorise=true"],
     "unknown key 'tirx.disable_vectorise' (did you mean tirx.disable_vectorize"),
    (["--pass-config", "bogus=1"], "TVM knows: relax.FuseOps.max_depth, "),
    (["--pass-config", "tirx.disable_vectorize=maybe"], "tirx.disable_vectorize is a bool"),
    (["--pass-config", "tirx.vtcm_capacity=lots"], "tirx.vtcm_capacity is an integer"),
    (["--pass-config", "tirx.UnrollLoop=1"], "cannot be given on the command line"),
    (["--pass-config", "tirx.noalias"], "give key=value"),
    (["--pass-config", "tirx.noalias=1", "--pass-config", "tirx.noalias=0"], "given twice"),
    (["-O", "4"], "-O/--opt-level 4: must be one of 0, 1, 2, 3"),
    (["--input-shapes", "x:[1,-1]"], "dynamic dimension"),
    (["--target", "energon, cuda"], "unknown target kind"),
])
def test_compile_options_are_checked_before_any_work(model_files, tmp_path, monkeypatch, capsys, args, message):
    from energon_tvm.tvmc import compiler

    def no_work(*_args, **_kwargs):
        raise AssertionError("the command did work before checking its options")

    monkeypatch.setattr(compiler, "compile_model", no_work)
    monkeypatch.setattr(compiler, "load_model", no_work)
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(tmp_path / "m.tar"), *args]) == 1
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--number", "0"], "--number 0: must be at least 1"),
    (["--repeat", "-2"], "--repeat -2: must be at least 1"),
    (["--number", "200", "--repeat", "100"], "is 20000 runs; the limit is 10000"),
    (["--print-top", "0"], "--print-top 0: must be at least 1"),
    (["-i", "{root}/missing.npz"], "does not exist"),
    (["--reference", "{root}/missing.npz"], "--reference file"),
    (["-o", "{tmp}/same.npz", "--trace", "{tmp}/same.npz"], "name the same file"),
])
def test_run_options_are_checked_before_any_work(model_files, package, tmp_path, monkeypatch, capsys, args,
                                                 message):
    from energon_tvm.tvmc import runner

    def no_work(*_args, **_kwargs):
        raise AssertionError("the command did work before checking its options")

    monkeypatch.setattr(runner, "run_package", no_work)
    monkeypatch.setattr(runner, "PackageSession", no_work)
    argv = ["run", str(package), *(a.format(root=model_files, tmp=tmp_path) for a in args)]
    assert main(argv) == 1
    assert message in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


# -- a failing command leaves no file behind --------------------------------------------------------
def test_a_compile_that_fails_late_writes_nothing(model_files, tmp_path, monkeypatch, capsys):
    from energon_tvm import host

    def broken(*_args, **_kwargs):
        raise RuntimeError("out of registers")

    monkeypatch.setattr(host, "build", broken)
    argv = ["compile", str(model_files / "model.onnx"), "-o", str(tmp_path / "m.tar"), "--dump-code", "isa,relax",
            "--dump-offloads", str(tmp_path / "offloads.txt")]
    assert main(argv) == 1
    assert "host build failed: RuntimeError: out of registers" in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_late_writes_nothing(model_files, package, tmp_path, capsys):
    np.savez(tmp_path / "ref.npz", other=np.zeros(3, np.float32))
    files = [tmp_path / "out.npz", tmp_path / "trace.json", tmp_path / "report.html"]
    argv = ["run", str(package), "-i", str(model_files / "inputs.npz"), "-o", str(files[0]), "--trace",
            str(files[1]), "--report", str(files[2]), "--reference", str(tmp_path / "ref.npz")]
    assert main(argv) == 1
    assert "has no output" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]


def test_a_failing_inspect_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar archive at all" * 40)
    assert main(["inspect", str(bad)]) == 1
    assert "not a readable tar archive" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]


# -- the command line itself ------------------------------------------------------------------------
def test_verbose_counts_before_and_after_the_command():
    parser = build_parser()
    for argv, level in ((["-v", "run", "p.tar"], 1), (["run", "p.tar", "-v"], 1), (["-vv", "run", "p.tar", "-v"], 3)):
        args = parser.parse_args(argv)
        assert args.verbose + args.command_verbose == level, argv
