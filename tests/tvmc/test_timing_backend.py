"""The timing backend: reference outputs and kept sets, and a full run's cycles, DRAM bytes and energy
from a timing-only simulator run on the reference's sparsity."""

import numpy as np
import pytest

from energon_tvm.tvmc.errors import TVMCError


def _dram(stats):
    return stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]


@pytest.fixture(scope="module")
def sparse_package(model_files):
    """The fixture model with MP-MRF's mean/max rule: its random weights give flat rows, where the default
    gap rule keeps every key and kept counts would check nothing."""
    from energon_tvm.tvmc import compile_model, write

    write(compile_model(model_files / "model.onnx", alpha="0,-0.25"), model_files / "sparse.tar")
    return model_files / "sparse.tar"


@pytest.fixture(scope="module")
def runs(sparse_package, model_files):
    from energon_tvm.tvmc.runner import PackageSession, make_inputs

    package = sparse_package

    out = {}
    with PackageSession(package) as session:
        for fill in ("file", "random"):
            feeds = make_inputs(session.manifest, model_files / "inputs.npz" if fill == "file" else None, seed=3)
            out[fill] = {b: session.run(feeds, backend=b) for b in ("simulator", "timing", "reference")}
    return out


@pytest.mark.parametrize("fill", ["file", "random"])
def test_timing_equals_full_simulator_figures(runs, fill):
    (_, sim_calls), (_, tim_calls) = runs[fill]["simulator"], runs[fill]["timing"]
    assert len(sim_calls) == len(tim_calls) == 2  # both call sites of the fixture model
    for full, timing in zip(sim_calls, tim_calls):
        a, b = full.stats, timing.stats
        assert (a.executor, b.executor) == ("simulator", "timing")
        assert b["cycles"] == a["cycles"] > 0
        assert _dram(b) == _dram(a) > 0
        assert b["energy_pj"]["total"] == a["energy_pj"]["total"] > 0
        assert b.kept_per_round == a.kept_per_round and b.candidates == a.candidates
        assert b.kept < b.candidates  # the filter pruned something: kept counts are a real check


@pytest.mark.parametrize("fill", ["file", "random"])
def test_timing_outputs_are_the_reference_backends(runs, fill):
    (t_out, t_calls), (r_out, r_calls) = runs[fill]["timing"], runs[fill]["reference"]
    assert t_out.keys() == r_out.keys()
    for name in t_out:
        np.testing.assert_array_equal(t_out[name], r_out[name])
    assert [c.stats.kept_per_round for c in t_calls] == [c.stats.kept_per_round for c in r_calls]
    assert all(not c.stats.machine for c in r_calls)
    # the simulator's own outputs are close to (not necessarily equal to) the reference's
    s_out = runs[fill]["simulator"][0]
    for name in t_out:
        np.testing.assert_allclose(s_out[name], t_out[name], rtol=0, atol=1e-4)


def test_timing_backend_traces(package):
    from energon_tvm.tvmc.runner import run_package

    result = run_package(package, backend="timing", trace=True)
    assert all(c.stats.trace for c in result.calls)


def test_unknown_backend_is_one_line(package):
    from energon_tvm.tvmc.runner import run_package

    with pytest.raises(TVMCError, match="--backend 'fast': unknown; known: simulator, timing, reference"):
        run_package(package, backend="fast")


def _tvmc(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "energon_tvm.tvmc", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_cli_backend_profiles_agree(package, model_files):
    rows = {}
    for backend in ("simulator", "timing"):
        proc = _tvmc("run", package, "-i", model_files / "inputs.npz", "--backend", backend, "--profile")
        assert proc.returncode == 0, proc.stderr
        rows[backend] = [line for line in proc.stdout.splitlines() if line.lstrip().startswith(("0", "1", "all"))]
    assert len(rows["timing"]) == 3 and rows["timing"] == rows["simulator"]
    proc = _tvmc("run", package, "--backend", "fast")
    assert proc.returncode != 0 and "invalid choice: 'fast'" in proc.stderr
    help_text = " ".join(_tvmc("run", "--help").stdout.split())
    for phrase in ("simulator (default): the program on the full simulator, its own bit-exact outputs",
                   "timing: the numpy reference's outputs", "reference: outputs and kept ratios only"):
        assert phrase in help_text


def test_timing_cache_is_exact_and_keyed_by_program_and_kept_sets(sparse_package, model_files):
    """A call whose program and kept sets equal an earlier call's takes its figures: the same figures a
    runner without the cache simulates, and a different input (other kept sets) is simulated."""
    from energon_tvm.executor import TimingCache
    from energon_tvm.tvmc.runner import PackageSession, make_inputs

    figures = {}
    for capacity in (4096, 0):
        with PackageSession(sparse_package) as session:
            session.runner.timing_cache = cache = TimingCache(capacity)
            a = make_inputs(session.manifest, model_files / "inputs.npz")
            b = make_inputs(session.manifest, None, seed=5)
            runs = [session.run(feeds, backend="timing")[1] for feeds in (a, b, a)]
            figures[capacity] = [[c.stats.machine for c in calls] for calls in runs]
            calls = len(runs[0])
            if capacity:
                assert (cache.misses, cache.hits) == (2 * calls, calls)  # the third run is all hits
            else:
                assert (cache.hits, len(cache)) == (0, 0)
            assert [c.stats.kept_per_round for c in runs[0]] != [c.stats.kept_per_round for c in runs[1]]
    assert figures[4096] == figures[0]
    assert figures[4096][2] == figures[4096][0] and figures[4096][1] != figures[4096][0]


def test_timing_cache_drops_the_least_recently_used():
    from energon_tvm.isa.errors import ConfigError

    from energon_tvm.executor import TimingCache

    cache = TimingCache(2)
    cache.put(b"a", {"cycles": 1})
    assert cache.get(b"a") == {"cycles": 1} and cache.get(b"b") is None
    cache.put(b"b", {"cycles": 2})
    cache.get(b"a")  # a is now the most recently used: adding c drops b
    cache.put(b"c", {"cycles": 3})
    assert cache.get(b"b") is None and cache.get(b"a") == {"cycles": 1} and len(cache) == 2
    assert (cache.hits, cache.misses) == (3, 2)
    with pytest.raises(ConfigError, match="capacity -1: must be >= 0"):
        TimingCache(-1)


def test_reference_profile_gives_kept_ratios_and_no_machine_figures(sparse_package, model_files):
    """--profile on the reference backend: each call's kept ratios (the timing backend's, which runs the
    same reference) and a line saying there are no machine figures, never a traceback or zeros."""
    rows = {}
    for backend in ("timing", "reference"):
        proc = _tvmc("run", sparse_package, "-i", model_files / "inputs.npz", "--backend", backend, "--profile")
        assert proc.returncode == 0, proc.stderr
        rows[backend] = [line.split() for line in proc.stdout.splitlines()
                         if line.lstrip().startswith(("0 ", "1 "))]
        if backend == "reference":
            assert "no machine figures on the reference backend" in proc.stdout
            assert "energy by component" not in proc.stdout and "cycles" not in proc.stdout.split("\n")[0]
    assert len(rows["reference"]) == 2
    # site, policy and the kept ratios per round (the timing rows' last columns) agree
    for timing, reference in zip(rows["timing"], rows["reference"]):
        assert reference[1] == timing[1] and reference[2:] == timing[-len(reference) + 2:]


def test_bound_per_inference_is_the_mean_and_names_the_unit_of_the_most_bound_cycles(monkeypatch):
    """Three inferences, two binding on attention, one on DRAM with more bound cycles than the other two
    together: the mean of their bounds, and DRAM (a vote of inferences would say attention), in any order;
    and the mean of their energy bounds."""
    from types import SimpleNamespace

    from energon_tvm.schedules import bounds

    from energon_tvm.tvmc.runner import bound_per_inference

    def inference(cycles: int, binds: str, pj: float) -> list:  # one call whose "statistics" are its bound
        return [SimpleNamespace(workload=None, stats=bounds.CallBound(0, 0, 0, 0, 0, 0, cycles, binds,
                                                                      energy_pj=pj))]

    monkeypatch.setattr(bounds, "call_bound_from_stats", lambda w, cfg, stats: stats)
    runs = [inference(60, "attention", 30.0), inference(60, "attention", 60.0), inference(200, "dram", 90.0)]
    for order in (runs, runs[::-1]):
        assert bound_per_inference(order, None) == (320 / 3, "dram", 60.0)
