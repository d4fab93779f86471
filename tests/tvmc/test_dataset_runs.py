"""Data-set runs: many sets of inputs through one loaded package, as one .npz with a sample axis or a
folder of .npz files, checked against single runs of each sample."""

import subprocess
import sys

import numpy as np
import pytest

from energon_tvm.tvmc.errors import TVMCError

N = 5


def _samples(model_files):
    with np.load(model_files / "inputs.npz") as z:
        base = {k: z[k] for k in z.files}
    rng = np.random.default_rng(11)
    # sample 0 is the fixture's inputs; the others draw new activations and pad a different number of keys
    out = []
    for i in range(N):
        s = {"x": base["x"] if i == 0 else rng.standard_normal(base["x"].shape).astype(np.float32),
             "mask": base["mask"].copy()}
        if i:
            s["mask"][..., :] = 0.0
            s["mask"][..., 6 - (i % 3):] = -1e9
        out.append(s)
    return out


@pytest.fixture(scope="module")
def dataset(model_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    samples = _samples(model_files)
    np.savez(root / "ds.npz", **{k: np.stack([s[k] for s in samples]) for k in samples[0]})
    folder = root / "folder"
    folder.mkdir()
    for i, s in enumerate(samples):
        np.savez(folder / f"sample_{i:03d}.npz", **s)
        np.savez(root / f"single_{i}.npz", **s)
    return root


@pytest.fixture(scope="module")
def singles(package, dataset):
    from energon_tvm.tvmc.runner import run_package

    return [run_package(package, inputs=dataset / f"single_{i}.npz", backend="timing") for i in range(N)]


def _check_against_singles(result, singles):
    from energon_tvm.tvmc.runner import summarize

    assert result.count == N
    for name, stacked in result.outputs.items():
        assert stacked.shape == (N,) + singles[0].outputs[name].shape
        for i, single in enumerate(singles):
            np.testing.assert_array_equal(stacked[i], single.outputs[name])
    totals = [summarize(s.calls) for s in singles]
    np.testing.assert_array_equal(result.cycles, [t["cycles"] for t in totals])
    np.testing.assert_array_equal(result.dram_bytes, [t["dram_bytes"] for t in totals])
    np.testing.assert_array_equal(result.energy_pj, [t["energy_pj"] for t in totals])
    kept = np.array([[c.stats.kept / c.stats.candidates for c in s.calls] for s in singles])
    np.testing.assert_array_equal(result.kept_ratio, kept)
    assert result.sites == tuple(c.site for c in singles[0].calls) and len(result.sites) == 2
    return totals, kept


def test_npz_dataset_equals_single_runs(package, dataset, singles):
    from energon_tvm.tvmc.runner import run_dataset

    result = run_dataset(package, dataset / "ds.npz", backend="timing")
    totals, kept = _check_against_singles(result, singles)
    assert len(set(result.cycles.tolist())) > 1  # the samples differ: the per-sample figures are a real check
    agg = result.aggregates()
    for key in ("cycles", "energy_pj", "dram_bytes"):
        x = np.array([t[key] for t in totals], np.float64)
        assert agg[key] == {"mean": pytest.approx(x.mean(), rel=1e-12), "p50": np.percentile(x, 50),
                            "p95": np.percentile(x, 95)}
    assert agg["kept_ratio_mean"] == pytest.approx(kept.mean(axis=0).tolist(), rel=1e-12)


def test_folder_dataset_equals_single_runs(package, dataset, singles):
    from energon_tvm.tvmc.runner import run_dataset

    _check_against_singles(run_dataset(package, dataset / "folder", backend="timing"), singles)


def test_simulator_dataset_first_sample_equals_single_run(package, dataset, model_files):
    from energon_tvm.tvmc.runner import run_dataset, run_package

    result = run_dataset(package, dataset / "ds.npz")  # the full simulator
    single = run_package(package, inputs=model_files / "inputs.npz")
    for name, out in single.outputs.items():
        np.testing.assert_array_equal(result.outputs[name][0], out)
    assert result.cycles[0] == single.totals()["cycles"]


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_bad_shapes_and_mixed_counts_are_one_line(package, dataset, tmp_path):
    from energon_tvm.tvmc.runner import run_dataset

    with np.load(dataset / "ds.npz") as z:
        x, mask = z["x"], z["mask"]
    cases = {
        "bad shape": (_save(tmp_path / "a.npz", x=x[:, :, :3], mask=mask),
                      r"input 'x' has shape \[5, 1, 3, 16\]; the package was compiled for \[1, 6, 16\] \(one sample\) "
                      r"or \[N, 1, 6, 16\] \(N samples\)"),
        "mixed N": (_save(tmp_path / "b.npz", x=x, mask=mask[:3]),
                    r"different numbers of samples \('x' 5, 'mask' 3\)"),
        "one without axis": (_save(tmp_path / "c.npz", x=x, mask=mask[0]),
                             r"input 'x' holds 5 samples .* but input 'mask' has one sample's shape"),
        "NaN": (_save(tmp_path / "d.npz", x=np.where(np.arange(16) == 3, np.nan, x).astype(np.float32), mask=mask),
                r"input 'x' holds 30 NaN or infinite value\(s\), the first nan at \[0, 0, 0, 3\]"),
        "lossy dtype": (_save(tmp_path / "e.npz", x=x.astype(np.float64), mask=mask), r"input 'x' is float64"),
        "single": (dataset / "single_0.npz", r"holds one set of inputs"),
    }
    for what, (path, message) in cases.items():
        with pytest.raises(TVMCError, match=message) as err:
            run_dataset(package, path, backend="reference")
        assert "\n" not in str(err.value), what
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TVMCError, match="holds no .npz file"):
        run_dataset(package, empty)
    many = _save(tmp_path / "many.npz", x=np.repeat(x, 400, axis=0), mask=np.repeat(mask, 400, axis=0))
    # 2000 samples: 0.8 MiB of inputs fit in 1 MiB, with 0.7 MiB of outputs they do not
    with pytest.raises(TVMCError, match=r"the data set needs 1.5 MiB for its 2000 samples' inputs and outputs; "
                                        r"the memory budget is 1.0 MiB"):
        run_dataset(package, many, memory_budget=1 << 20)
    with pytest.raises(TVMCError, match=r"many.npz: the inputs hold 0.8 MiB of data; the memory budget is 0.5 MiB"):
        run_dataset(package, many, memory_budget=1 << 19)


def test_bad_sample_in_folder_names_it(package, dataset, tmp_path):
    from energon_tvm.tvmc.runner import run_dataset

    folder = tmp_path / "folder"
    folder.mkdir()
    with np.load(dataset / "single_0.npz") as z:
        good = {k: z[k] for k in z.files}
    _save(folder / "a.npz", **good)
    _save(folder / "b.npz", x=good["x"][:, :3], mask=good["mask"])
    message = r"input 'x' has shape \[1, 3, 16\]; the package was compiled for \[1, 6, 16\]$"
    with pytest.raises(TVMCError, match=message):
        run_dataset(package, folder, backend="reference")


def test_cli_dataset_profile_and_outputs(package, dataset, singles, tmp_path):
    out = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, "-m", "energon_tvm.tvmc", "run", str(package), "-i",
                           str(dataset / "ds.npz"), "--backend", "timing", "--profile", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "input/s" in proc.stderr  # the progress bar
    assert f"{N} input(s) on the timing backend" in proc.stdout
    assert f"of {N * 2:,} call(s) simulated" in proc.stdout  # the timing cache's line: 2 calls per sample
    cycles = np.array([s.totals()["cycles"] for s in singles], np.float64)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("cycles "))
    assert row.split()[1:] == [f"{cycles.mean():,.3f}", f"{np.percentile(cycles, 50):,.3f}",
                               f"{np.percentile(cycles, 95):,.3f}"]
    with np.load(out) as z:
        for name in z.files:
            np.testing.assert_array_equal(z[name], np.stack([s.outputs[name] for s in singles]))


def test_repeated_samples_take_the_timing_cache(package, dataset, singles, tmp_path):
    """A data set holding every sample twice: the second copies' calls take the first's figures, and every
    sample's figures still equal its single run's."""
    from energon_tvm.tvmc.runner import run_dataset

    with np.load(dataset / "ds.npz") as z:
        np.savez(tmp_path / "twice.npz", **{k: np.concatenate([z[k], z[k]]) for k in z.files})
    result = run_dataset(package, tmp_path / "twice.npz", backend="timing")
    calls = 2 * N * len(result.sites)
    assert result.timing_simulated + result.timing_cached == calls
    assert result.timing_cached >= calls // 2  # every call of the second half at least
    totals = [s.totals() for s in singles] * 2
    np.testing.assert_array_equal(result.cycles, [t["cycles"] for t in totals])
    np.testing.assert_array_equal(result.energy_pj, [t["energy_pj"] for t in totals])
    np.testing.assert_array_equal(result.dram_bytes, [t["dram_bytes"] for t in totals])
    assert run_dataset(package, tmp_path / "twice.npz", backend="reference").timing_cached == 0


def test_cli_dataset_refuses_single_run_options(package, dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "energon_tvm.tvmc", "run", str(package), "-i",
                           str(dataset / "folder"), "--trace", str(tmp_path / "t.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"tvmc: error: --trace describes one run; with a data set (-i {dataset / 'folder'}) use --profile and -o"]
    assert not (tmp_path / "t.json").exists()


@pytest.mark.slow
def test_dask_cluster_gives_the_local_result_in_order(package, dataset):
    from distributed import LocalCluster

    from energon_tvm.tvmc.runner import run_dataset

    local = run_dataset(package, dataset / "ds.npz", backend="timing")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = run_dataset(package, dataset / "folder", backend="timing", dask_scheduler=cluster.scheduler_address)
    for name in local.outputs:
        np.testing.assert_array_equal(remote.outputs[name], local.outputs[name])
    for key in ("cycles", "energy_pj", "dram_bytes", "kept_ratio"):
        np.testing.assert_array_equal(getattr(remote, key), getattr(local, key))
    assert remote.sites == local.sites


def test_unreachable_dask_scheduler_is_one_line(package, dataset):
    from energon_tvm.tvmc.runner import run_dataset

    with pytest.raises(TVMCError, match=r"--dask-scheduler: cannot reach the Dask scheduler at tcp://127.0.0.1:9 "
                                        r"within 1 s"):
        run_dataset(package, dataset / "ds.npz", backend="reference", dask_scheduler="tcp://127.0.0.1:9",
                    dask_timeout=1)


def test_cli_dask_scheduler_needs_a_dataset(package, model_files):
    proc = subprocess.run([sys.executable, "-m", "energon_tvm.tvmc", "run", str(package), "-i",
                           str(model_files / "inputs.npz"), "--dask-scheduler", "tcp://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "tvmc: error: --dask-scheduler spreads a data set's samples; -i gives one set of inputs here (a data set is "
        "an .npz whose arrays carry a leading sample axis, or a folder of .npz files)"]
