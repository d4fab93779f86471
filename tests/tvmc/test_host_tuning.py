"""tvmc tune --host (MetaSchedule over the host kernels) and tvmc compile --tuning-records DB_DIR: the tuned
build computes what the default build does, a second run continues the database, and a bad database
folder or a TVM that cannot keep one is a one-line error.

The tuning tests need a TVM whose IR serialiser works (MetaSchedule stores every kernel with it); on an
installation where it crashes they are skipped with the reason, and the one-line refusal is tested."""

import os
import stat

import numpy as np
import pytest

from energon_tvm import host_tuning
from energon_tvm.tvmc import read_package, run_package
from energon_tvm.tvmc.compiler import tune_host_model
from energon_tvm.tvmc.main import main

#: a search small enough for a handful of trials (MetaSchedule's defaults sample 512 candidates a round)
SMALL_SEARCH = {"population_size": 16, "init_min_unmeasured": 8, "genetic_num_iters": 1}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tvmc: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def serialisable():
    try:
        host_tuning.check_serialization()
    except host_tuning.HostTuningError as err:
        pytest.skip(str(err))


def test_a_tvm_that_cannot_serialise_is_refused_in_one_line(tmp_path):
    crash = tmp_path / "python"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")  # a child that dies as save_json does on a broken install
    crash.chmod(crash.stat().st_mode | stat.S_IEXEC)
    with pytest.raises(host_tuning.HostTuningError) as err:
        host_tuning.check_serialization(str(crash))
    text = str(err.value)
    assert text.startswith("this TVM cannot serialise its IR, which MetaSchedule's database needs: tvm.ir.save_json "
                           "died of signal 11 in a child process (apache-tvm ")
    assert "\n" not in text and text.endswith("install apache-tvm-ffi==0.1.14.post0, with which it works")


@pytest.mark.parametrize("make, needle", [
    (lambda d: d, "holds no host database (no database_workload.json and database_tuning_record.json"),
    (lambda d: (d / host_tuning.WORKLOADS).write_text("") or d, "has database_workload.json but not "
                                                               "database_tuning_record.json"),
    (lambda d: [(d / n).write_text(t) for n, t in ((host_tuning.WORKLOADS, '["1", "x"]\n'),
                                                     (host_tuning.RECORDS, "not json\n"))] and d,
     "database_tuning_record.json: line 1 is not JSON"),
    (lambda d: [(d / n).write_text(t) for n, t in ((host_tuning.WORKLOADS, '{"a": 1}\n'),
                                                     (host_tuning.RECORDS, ""))] and d,
     "database_workload.json: line 1 is not a MetaSchedule workload entry (a JSON list of 2)"),
])
def test_a_bad_database_folder_is_one_line(model_files, tmp_path, capsys, make, needle):
    folder = tmp_path / "db"
    folder.mkdir()
    make(folder)
    out = tmp_path / "out.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(out), "--tuning-records", str(folder)]) == 1
    assert needle in _one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--host"], "tvmc tune --host needs --host-trials N"),
    (["--host", "--host-trials", "0"], "--host-trials 0: must be a positive integer"),
    (["--host", "--host-trials", "4", "--trials", "8"], "--trials applies to the Energon schedules"),
    (["--host", "--host-trials", "4", "--objective", "energy"], "--objective applies to the Energon schedules"),
    (["--host-trials", "4"], "--host-trials applies to tvmc tune --host"),
    (["--host", "--host-trials", "4", "-o", "{tmp}/no/db"], "its parent '{tmp}/no' does not exist"),
    (["--host", "--host-trials", "4", "-o", "{tmp}/file"], "is a file; a host database is a folder"),
])
def test_tune_host_checks_its_options_before_any_work(model_files, tmp_path, capsys, monkeypatch, args, needle):
    from energon_tvm.tvmc import compiler

    def no_work(*_args, **_kwargs):
        raise AssertionError("tune did work before checking its options")

    monkeypatch.setattr(compiler, "partition_model", no_work)
    monkeypatch.setattr(host_tuning, "check_serialization", lambda *a: None)
    (tmp_path / "file").write_text("x")
    argv = ["tune", str(model_files / "model.onnx"), *([] if "-o" in args else ["-o", str(tmp_path / "db")]),
            *(a.format(tmp=tmp_path) for a in args)]
    assert main(argv) == 1
    assert needle.format(tmp=tmp_path) in _one_error_line(capsys)
    assert not (tmp_path / "db").exists()


def test_two_folders_or_two_files_are_refused(model_files, tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    argv = ["compile", str(model_files / "model.onnx"), "-o", str(tmp_path / "o.tar"), "--tuning-records",
            str(tmp_path / "a"), "--tuning-records", str(tmp_path / "b")]
    assert main(argv) == 1
    assert "--tuning-records names 2 host database folders" in _one_error_line(capsys)


@pytest.mark.slow  # MetaSchedule's first use imports TVM's tensor intrinsics: ~40 s on the loaded test machine
def test_tuned_build_equals_the_default_and_a_second_run_continues(serialisable, model_files, package, tmp_path,
                                                                    capsys, monkeypatch):
    db = tmp_path / "host-db"
    first = tune_host_model(model_files / "model.onnx", db, trials=5, search=SMALL_SEARCH)
    assert (first.trials_before, first.trials_after, first.budget) == (0, 5, 5)
    assert sorted(os.listdir(db)) >= [host_tuning.RECORDS, host_tuning.WORKLOADS]
    assert all(k.trials >= 1 for k in first.kernels[:5])  # each of the first kernels' default schedule measured
    again = tune_host_model(model_files / "model.onnx", db, trials=5, search=SMALL_SEARCH)
    assert (again.trials_before, again.trials_after) == (5, 5)  # the budget is met: nothing to add

    # the command line: a larger budget adds only the difference, timed on a Dask cluster: 6 trials of
    # search (2 a round over the 3 kernels) and 12 re-measurements (each kernel's best and default twice)
    from distributed import LocalCluster

    assert len(first.kernels) == 3
    monkeypatch.setattr(host_tuning, "SEARCH", dict(host_tuning.SEARCH, **SMALL_SEARCH))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert main(["tune", str(model_files / "model.onnx"), "--host", "--host-trials", "23", "-o", str(db),
                     "--dask-scheduler", cluster.scheduler_address]) == 0
    out = capsys.readouterr().out
    assert f"18 trial(s) run, 23 in {db} (budget 23)" in out
    assert out.count(": re-measured default ") == 3, out

    tuned = tmp_path / "tuned.tar"
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(tuned), "--tuning-records", str(db)]) == 0
    out = capsys.readouterr().out
    kernels = len(first.kernels)
    assert f"{kernels} of {kernels} host kernel(s) scheduled from {db} (MetaSchedule)" in out
    assert read_package(tuned).manifest["host"] == read_package(package).manifest["host"]
    a, b = (run_package(p, inputs=model_files / "inputs.npz", backend="reference") for p in (tuned, package))
    for name, value in b.outputs.items():
        np.testing.assert_allclose(a.outputs[name], value, rtol=1e-5, atol=1e-6)

    # records tuned for another CPU are not applied to a build for this one
    assert main(["compile", str(model_files / "model.onnx"), "-o", str(tmp_path / "v2.tar"), "--tuning-records",
                 str(db), "--target-llvm-mcpu", "x86-64-v2"]) == 0
    out = capsys.readouterr().out
    assert f"0 of {kernels} host kernel(s) scheduled from" in out and "tuned for another CPU" in out


def test_the_search_takes_the_expensive_kernels_first_and_skips_the_negligible():
    from types import SimpleNamespace

    def kernel(name, calls):
        return host_tuning.Kernel(name, calls, None)

    def trials(*secs):
        return [SimpleNamespace(run_secs=[s]) for s in secs]

    kernels = [kernel("cast", 1), kernel("ffn", 6), kernel("qkv", 18), kernel("new", 2), kernel("softmax", 6),
               kernel("gather", 1)]
    records = {"cast": trials(1e-6), "ffn": trials(2e-3, 1.5e-3), "qkv": trials(3e-4),
               "softmax": trials(1e-3, 1e10), "gather": trials(1e10)}  # 1e10: MetaSchedule's mark of a failure
    order = [k.name for k in host_tuning.worth_tuning(kernels, records)]
    # ffn 6 x 1.5 ms, softmax 6 x 1 ms, qkv 18 x 0.3 ms; cast is 1e-4 of the model; new has no trial yet;
    # every trial of gather failed
    assert order == ["ffn", "softmax", "qkv", "new"]
