"""Policies side by side (energon_tvm.models.compare): the machine figures against the reference's own
kept sets and the bounds, the regrouping of captured attention, the report and the command's errors."""

from __future__ import annotations

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.numerics import POLICIES, MPMRFParams

from energon_tvm.models import compare
from energon_tvm.models.evaluation import SettingResult, TaskResult
from energon_tvm.mpmrf import mpmrf_attention
from energon_tvm.workloads import structured_qkv


def _calls(seed=0, s=40, h=2, d=16, pad=5):
    rng = np.random.default_rng(seed)
    q, k, v = structured_qkv(rng, 1, h, s, s, d)
    mask = np.zeros((1, 1, s, s), np.float32)
    mask[..., s - pad:] = -np.inf
    return [(q, k, v, compare.padding_row(mask), None)]


def test_sweep_has_three_operating_points_per_sparse_policy():
    settings = compare.sweep_settings()
    for policy in ("mpmrf", "topk", "sanger"):
        assert len([p for p in settings.values() if p.policy == policy]) >= 3
    assert [p.policy for p in compare.POLICY_SWEEP["dense"].values()] == ["dense"]
    assert set(compare.POLICY_SWEEP) == set(POLICIES)
    with pytest.raises(Exception, match="policy 'bogus'"):
        compare.sweep_settings(["bogus"])


def test_padding_row():
    m = np.zeros((1, 1, 6, 6), np.float32)
    assert compare.padding_row(m) is None
    m[..., 4:] = -np.inf
    row = compare.padding_row(m)
    assert row.shape == (1, 1, 1, 6) and np.array_equal(row[0, 0, 0], m[0, 0, 0])
    causal = np.triu(np.full((6, 6), -np.inf, np.float32), 1)[None, None]
    assert compare.padding_row(causal).shape == (1, 1, 6, 6)  # rows differ: kept as it is
    assert compare.padding_row(None) is None


def test_model_inferences_regroup_sites_per_sentence():
    class S:
        def __init__(self, tag):
            self.q = self.k = self.v = tag
            self.mask, self.scale = None, 0.5

    samples = {"layer0": [S("a0"), S("b0")], "layer1": [S("a1"), S("b1")]}
    got = compare.model_inferences(samples)
    assert [[c[0] for c in calls] for calls in got] == [["a0", "a1"], ["b0", "b1"]]
    assert got[0][0][3:] == (None, 0.5)


@pytest.mark.parametrize("name", ["gap 8/4", "mpmrf 0/-0.25", "dense INT16", "topk 0.35", "sanger 0.01"])
def test_machine_figures_agree_with_the_reference_and_the_bound(name):
    params = compare.sweep_settings()[name]
    calls = _calls()
    fig = compare.machine_figures([calls, _calls(seed=1)], {name: params}, load_config("edge"), progress=False)[0]
    kept = cand = 0
    for seed in (0, 1):
        q, k, v, mask, _ = _calls(seed=seed)[0]
        r = mpmrf_attention(q, k, v, mask, params)
        kept += r.final_kept.sum()
        cand += r.candidates.sum()
    assert fig.kept == pytest.approx(kept / cand, abs=1e-12)  # the simulator kept what the reference did
    assert fig.policy == params.policy and fig.inputs == 2
    assert fig.bound_cycles <= fig.cycles and fig.compulsory_dram_bytes <= fig.dram_bytes
    assert fig.energy_uj > 0 and fig.cycles_se >= 0


def test_what_binds_is_the_unit_of_the_most_bound_cycles_not_a_vote_of_inferences(monkeypatch):
    # two inferences bound by attention (60 cycles each), one by DRAM (200): DRAM sets most of the bound
    from energon_tvm.schedules.bounds import CallBound

    stats = {"cycles": 300, "energy_pj": {"total": 1.0}, "dram_bytes": {"read_total": 1, "write_total": 1},
             "candidates": 4, "kept_per_round": [2]}

    def call(q, k, v, mask, scale, params, cfg):  # the "call" is its bound's cycles and unit
        return stats, CallBound(0, 0, 0, 0, 0, 0, q, k)

    monkeypatch.setattr(compare, "simulate_call", call)
    inferences = [[(60, "attention", None, None, None)], [(60, "attention", None, None, None)],
                  [(200, "dram", None, None, None)]]
    for order in (inferences, inferences[::-1]):
        fig = compare.machine_figures(order, {"gap 8/4": MPMRFParams()}, load_config("edge"), progress=False)[0]
        assert fig.binds == "dram" and fig.bound_cycles == pytest.approx(320 / 3)


def test_dense_keeps_everything_and_sparse_moves_less():
    cfg = load_config("edge")
    settings = {n: compare.sweep_settings()[n] for n in ("dense INT16", "topk 0.2")}
    dense, topk = compare.machine_figures([_calls(s=64, h=4, d=32)], settings, cfg, progress=False)
    assert dense.kept == 1.0 and topk.kept < 0.35
    assert topk.energy_uj < dense.energy_uj


def _comparison():
    acc = TaskResult("m", "movies-polarity", "accuracy", 10, 20, (
        SettingResult("dense", (), 0.8, 0.01, 0.0, 0.0, 1.0),
        SettingResult("gap 8/4", (0.9, 0.5), 0.79, 0.01, -0.01, 0.004, 1.0),
        SettingResult("topk 0.35", (0.36,), 0.78, 0.01, -0.02, 0.005, 1.0),
        SettingResult("dense INT16", (), 0.8, 0.01, 0.0, 0.001, 1.0)))
    mf = [compare.MachineFigures(n, p, k, c, 10.0, c * 0.8, "filter", e, 1000.0, 800.0, 4)
          for n, p, k, c, e in (("gap 8/4", "mpmrf", 0.5, 900.0, 2.0), ("topk 0.35", "topk", 0.36, 800.0, 1.8),
                                ("dense INT16", "dense", 1.0, 1000.0, 2.2))]
    return compare.Comparison("m", "edge", (acc,), tuple(mf), tuple(mf[:1]), 3.0)


def test_report_round_trip_and_plot(tmp_path):
    c = _comparison()
    assert compare.Comparison.from_dict(c.to_dict()) == c
    text = compare.markdown(c)
    for name in ("gap 8/4", "topk 0.35", "dense INT16"):
        assert f"| {name} |" in text
    assert "| topk | topk 0.35 | 0.360 | 78.00 | 1.00 | -2.00 | 0.50 |" in text
    assert "| 1.25x | 0.82 |" in text  # topk: 1000 / 800 cycles, 1.8 / 2.2 uJ against dense
    compare.plot(c, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 10_000
    # accuracy only (no machine rows): the kept panel alone, and no machine tables
    from dataclasses import replace

    bare = replace(c, machine=(), synthetic=())
    assert "cycles" not in compare.markdown(bare)
    compare.plot(bare, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 10_000


def test_command_refuses_bad_options(capsys):
    from energon_tvm.models.__main__ import main

    assert main(["compare", "--policies", "mpmrf,bogus"]) != 0
    assert "bogus" in capsys.readouterr().err
    assert main(["compare", "--model", "nope"]) != 0
    assert main(["compare", "--n-machine", "1"]) != 0
    assert main(["compare", "--settings", "topk 0.5,nope"]) != 0
    assert "'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compare", "evaluate"])
@pytest.mark.parametrize("option, value, says", [("--tasks", " , ", "--tasks is empty"),
                                                  ("--tasks", "movies-polarity,nope", "nope")])
def test_both_commands_refuse_bad_task_lists_before_a_model_loads(capsys, command, option, value, says):
    from energon_tvm.models.__main__ import main

    assert main([command, option, value]) != 0
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1


def test_evaluate_refuses_an_unknown_fixed_setting(capsys):
    from energon_tvm.models.__main__ import main

    assert main(["evaluate", "--fixed", "nope"]) != 0
    assert "--fixed 'nope': one of" in capsys.readouterr().err
