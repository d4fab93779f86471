"""The heuristic's objectives: what it ranks by (cycles, energy, their product) against what the
simulator measures for the schedules it picks, and the refusals of an unknown objective."""

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import ConfigError, ScheduleError
from energon_tvm.isa.numerics import MPMRFParams
from energon_tvm.runtime_sim import Simulator, run_attention
from energon_tvm.schedules import (
    AttentionWorkload,
    Schedule,
    call_bound,
    default_schedule,
    dense_workload,
    emit_program,
    fits,
    plan_tiling,
)
from energon_tvm.schedules.cost import DEFAULT_OBJECTIVE, OBJECTIVES, estimate

from energon_tvm.executor import ScheduleSource
from energon_tvm.mpmrf import mpmrf_attention
from energon_tvm.tuner import profile_from_arrays
from energon_tvm.workloads import structured_qkv


def measure(w, schedule, cfg, q, k, v):
    """(cycles, energy pJ, DRAM bytes, bound) of a timing-only run on the reference's sparsity."""
    profile = profile_from_arrays(w, q, k, v)
    stats = Simulator(cfg).run(emit_program(w, schedule, cfg), profile=profile).stats
    dram = stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]
    return stats["cycles"], stats["energy_pj"]["total"], dram, call_bound(w, cfg, profile)


def test_edp_takes_the_single_slot_tile_that_halves_dense_kv_traffic():
    # dense S=1024 on edge: a head's K/V (256 KiB) streams per query tile. The fastest estimate takes two
    # 32-row tile slots (the 8 KiB index buffer holds 64 rows of 1,024 candidate bits in all); the
    # product of cycles and energy takes one 64-row slot, which streams K/V half as often
    cfg = load_config("edge")
    w = dense_workload(AttentionWorkload(1, 2, 1024, 1024, 64))
    q, k, v = structured_qkv(np.random.default_rng(0), 1, 2, 1024, 1024, 64)
    fast, edp = default_schedule(w, cfg, "cycles"), default_schedule(w, cfg)
    assert DEFAULT_OBJECTIVE == "edp" and default_schedule(w, cfg, "energy") == edp
    assert (fast.q_tile, fast.tile_slots, edp.q_tile, edp.tile_slots) == (32, 2, 64, 1)
    (c_fast, e_fast, d_fast, bound), (c_edp, e_edp, d_edp, _) = (measure(w, s, cfg, q, k, v) for s in (fast, edp))
    # measured: the trade the estimate ranked by is the simulator's too
    assert c_edp * e_edp < c_fast * e_fast and e_edp < 0.7 * e_fast
    assert c_fast < c_edp < 1.1 * c_fast
    assert d_edp <= 1.02 * bound.tiling_min_dram_bytes < d_fast / 1.5
    assert bound.ratio(c_edp) < 1.1


def test_energy_objective_recomputes_the_scores_a_large_score_buffer_would_store():
    # MiniLM-like on server: 128 KiB of stored INT16 scores cost more SRAM energy than scoring twice
    cfg = load_config("server")
    w = AttentionWorkload(1, 12, 128, 128, 32, params=MPMRFParams.from_values("mpmrf", (0.0, -0.25)))
    q, k, v = structured_qkv(np.random.default_rng(0), 1, 12, 128, 128, 32)
    fast, frugal = default_schedule(w, cfg, "cycles"), default_schedule(w, cfg, "energy")
    assert (fast.filter_mode, frugal.filter_mode) == ("store", "recompute")
    (c_fast, e_fast, _, _), (c_frugal, e_frugal, _, _) = (measure(w, s, cfg, q, k, v) for s in (fast, frugal))
    assert e_frugal < 0.9 * e_fast and c_frugal > c_fast
    # and the recomputing program keeps the reference's sets and computes its output
    out, res = run_attention(emit_program(w, frugal, cfg), cfg, q, k, v, capture=True)
    ref = mpmrf_attention(q, k, v, None, w.params)
    rounds = len(ref.kept)
    assert np.array_equal(res.captured[rounds].reshape(ref.kept[-1].shape), ref.kept[-1])
    np.testing.assert_allclose(out, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())


@pytest.mark.parametrize("cfg_name,seq,d", [("edge", 128, 32), ("edge", 512, 64), ("edge", 1024, 64),
                                            ("server", 512, 64), ("server", 2048, 64)])
def test_energy_estimate_of_dense_schedules_is_the_simulators_within_ten_percent(cfg_name, seq, d):
    # dense attention has no sparsity to assume: the estimate's energy prices the counts the simulator's
    # energy model prices, so the two agree but for buffer traffic the estimate leaves out (index, bias)
    cfg = load_config(cfg_name)
    w = dense_workload(AttentionWorkload(1, 2, seq, seq, d))
    q, k, v = structured_qkv(np.random.default_rng(1), 1, 2, seq, seq, d)
    for objective in OBJECTIVES:
        s = default_schedule(w, cfg, objective)
        _, measured, _, _ = measure(w, s, cfg, q, k, v)
        assert estimate(plan_tiling(w, s, cfg), cfg).energy_pj == pytest.approx(measured, rel=0.10)


SRAM_CASES = [  # (config, workload, schedule or None for the heuristic's)
    ("edge", AttentionWorkload(1, 2, 512, 512, 64), None),  # filter shares
    ("edge", AttentionWorkload(1, 2, 512, 512, 64, bias_shape=(1, 1, 1, 512)), None),  # padding row, INT32
    ("edge", AttentionWorkload(1, 2, 256, 256, 64, bias_shape=(1, 2, 256, 256)), None),  # per-row bias
    ("edge", AttentionWorkload(1, 2, 256, 256, 64), Schedule(32, 64, 2, 2, 2, "chunk", "recompute", "chunk")),
    ("edge", AttentionWorkload(1, 2, 256, 256, 64, causal=True), Schedule(32, 64, 2, 2, 2, "head", "store")),
    ("edge", AttentionWorkload(1, 2, 256, 256, 64, causal=True), Schedule(32, 64, 2, 2, 2, "head", "recompute")),
    ("edge", AttentionWorkload(1, 2, 1024, 1024, 64), Schedule(8, 128, 1, 2, 2, "chunk", "store")),
    ("server", AttentionWorkload(1, 2, 512, 512, 64, bias_shape=(1, 2, 512, 512)),
     Schedule(8, 512, 3, 2, 2, "head", "recompute", "head")),
    ("edge", dense_workload(AttentionWorkload(1, 2, 256, 256, 64, bias_shape=(1, 1, 1, 256))), None),
]


@pytest.mark.parametrize("cfg_name,w,schedule", SRAM_CASES)
def test_estimated_buffer_traffic_is_the_simulators_where_sparsity_does_not_change_it(cfg_name, w, schedule):
    # Q, planes, bias and output are read and written the same whatever is kept: the estimate that
    # prices them counts exactly the simulator's bytes (K/V depend on the kept union, stored scores on
    # each round's candidates: written and read once each, at the round's score width)
    cfg = load_config(cfg_name)
    schedule = schedule or default_schedule(w, cfg)
    assert fits(w, schedule, cfg)
    q, k, v = structured_qkv(np.random.default_rng(0), 1, w.heads, w.seq_q, w.seq_k, w.head_dim)
    bias = None
    if w.bias_shape is not None:
        bias = np.zeros(w.bias_shape, np.float32)
        bias[..., -3:] = -1e4
    stats = Simulator(cfg).run(emit_program(w, schedule, cfg), profile=profile_from_arrays(w, q, k, v, bias)).stats
    plan = plan_tiling(w, schedule, cfg)
    est = estimate(plan, cfg).sram_bytes
    for buf in ("q", "kplane", "bias", "out"):
        acc = stats["sram_bytes"][buf]
        assert acc["read"] + acc["write"] == pytest.approx(est[buf], rel=1e-9, abs=0), buf
    scores = stats["sram_bytes"]["score"]
    round_candidates = (stats["candidates"], *stats["kept_per_round"][:-1])
    stored = sum(c * b for c, b in zip(round_candidates, plan.score_bytes)) if schedule.filter_mode == "store" else 0
    assert scores["write"] == scores["read"] == stored


def test_estimated_score_traffic_is_the_simulators_for_a_round_of_known_candidates():
    # one round over every pair: its candidates are known before any data is, and the estimate's stored
    # scores are the simulator's bytes (later rounds' candidates are the kept ratio the estimate assumes)
    cfg = load_config("edge")
    w = AttentionWorkload(1, 2, 256, 256, 64, params=MPMRFParams.from_values("gap", (8.0,), bits=((4, 4),)))
    schedule = default_schedule(w, cfg)
    assert schedule.filter_mode == "store"
    q, k, v = structured_qkv(np.random.default_rng(0), 1, 2, 256, 256, 64)
    stats = Simulator(cfg).run(emit_program(w, schedule, cfg), profile=profile_from_arrays(w, q, k, v)).stats
    plan = plan_tiling(w, schedule, cfg)
    assert stats["sram_bytes"]["score"]["write"] == 2 * 256 * 256 * plan.score_bytes[0]
    assert estimate(plan, cfg).sram_bytes["score"] == 2 * stats["sram_bytes"]["score"]["write"]


def test_an_unknown_objective_is_refused_naming_the_choices():
    cfg = load_config("edge")
    w = AttentionWorkload(1, 2, 128, 128, 64)
    with pytest.raises(ScheduleError, match=r"objective = 'latency'; one of cycles, energy, edp"):
        default_schedule(w, cfg, "latency")
    with pytest.raises(ConfigError, match=r"schedule objective = 'fast'; one of cycles, energy, edp"):
        ScheduleSource(objective="fast")
    assert ScheduleSource.from_records(None, "energy").choose(w, cfg).schedule == default_schedule(w, cfg, "energy")
