"""The scheduler: every workload the machine can take gets a schedule that fits and computes exactly
what the reference does; workloads it cannot take are rejected by name."""

import json

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import ScheduleError
from energon_tvm.isa.numerics import MPMRFParams
from energon_tvm.runtime_sim import run_attention
from energon_tvm.schedules import (
    AttentionWorkload,
    BufferPlan,
    Schedule,
    buffer_usage,
    check_fits,
    default_schedule,
    dense_workload,
    emit_program,
    fits,
    plan_tiling,
)
from energon_tvm.schedules.graph import critical_path, dependency_graph
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from energon_tvm.mpmrf import mpmrf_attention
from energon_tvm.workloads import structured_qkv

CONFIGS = {name: load_config(name) for name in ("edge", "server")}
MASKS = ("none", "padding", "causal", "bias", "causal+padding")


def build(b, h, sq, sk, d, mask):
    bias = {"none": None, "causal": None, "padding": (b, 1, 1, sk), "causal+padding": (b, 1, 1, sk),
            "bias": (1, h, sq, sk)}[mask]
    return AttentionWorkload(b, h, sq, sk, d, causal=mask.startswith("causal"), bias_shape=bias)


def inputs(w, seed):
    rng = np.random.default_rng(seed)
    q, k, v = structured_qkv(rng, w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim)
    bias = full = None
    if w.bias_shape is not None:
        bias = np.where(rng.random(w.bias_shape) < 0.15, -np.inf, 0.0).astype(np.float32)
        if w.mask_kind.endswith("bias"):
            bias = np.where(np.isfinite(bias), 0.5 * rng.standard_normal(w.bias_shape), bias).astype(np.float32)
        full = bias
    if w.causal:
        causal = np.where(np.arange(w.seq_k)[None] <= np.arange(w.seq_q)[:, None] + w.causal_shift, 0.0, -np.inf)
        full = causal if full is None else full + causal
    return q, k, v, bias, full


def check(w, cfg, seed=0):
    s = default_schedule(w, cfg)
    check_fits(w, s, cfg)
    usage = buffer_usage(w, s, cfg)
    assert all(usage[b] <= cfg.buffer(b) for b in usage)
    prog = emit_program(w, s, cfg)
    q, k, v, bias, full = inputs(w, seed)
    out, res = run_attention(prog, cfg, q, k, v, bias, capture=True)
    ref = mpmrf_attention(q, k, v, full, w.params)
    shape = ref.candidates.shape
    assert np.array_equal(res.captured[0].reshape(shape), ref.candidates)
    for r, kept in enumerate(ref.kept, 1):
        assert np.array_equal(res.captured[r].reshape(shape), kept), f"round {r} kept sets differ"
    np.testing.assert_allclose(out, ref.output, rtol=1e-5, atol=1e-6 * max(np.abs(ref.output).max(), 1e-30))


def _workloads(max_seq, max_pairs):
    @st.composite
    def draw(draw_):
        sq = draw_(st.integers(1, max_seq))
        sk = draw_(st.integers(1, max_seq))
        d = draw_(st.sampled_from([32, 64, 128]))
        mask = draw_(st.sampled_from(MASKS))
        h = draw_(st.integers(1, 16))
        b = draw_(st.integers(1, 4))
        while b * h * sq * sk > max_pairs and b * h > 1:  # keep each example's run short
            b, h = (b - 1, h) if b > 1 else (b, h - 1)
        return build(b, h, sq, sk, d, mask), draw_(st.sampled_from(sorted(CONFIGS)))
    return draw()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_workloads(max_seq=200, max_pairs=60_000), st.integers(0, 3))
def test_random_workloads_fit_run_and_equal_reference(case, seed):
    w, cfg_name = case
    check(w, CONFIGS[cfg_name], seed)


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_workloads(max_seq=2048, max_pairs=1_200_000), st.integers(0, 3))
def test_random_workloads_full_range(case, seed):
    w, cfg_name = case
    check(w, CONFIGS[cfg_name], seed)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("cfg_name", sorted(CONFIGS))
def test_every_mask_kind_on_both_configs(mask, cfg_name):
    check(build(2, 3, 45, 67, 64, mask), CONFIGS[cfg_name])


@pytest.mark.parametrize("w, match", [
    (AttentionWorkload(1, 1, 16, 16, 256), "head dim 256 is wider than the edge datapath"),
    (AttentionWorkload(1, 1, 16, 16, 36), "head dim 36 is not a multiple of 8"),
    (AttentionWorkload(4, 80, 16, 16, 32), "320 heads exceed the 256 head slots"),
    (AttentionWorkload(1, 1, 16, 8192, 64, bias_shape=(1, 1, 1, 8192)),
     "bias buffer needs 32768 bytes, edge has 16384"),
])
def test_workloads_the_machine_cannot_take(w, match):
    with pytest.raises(ScheduleError, match=match):
        default_schedule(w, CONFIGS["edge"])


def test_explicit_schedules_that_do_not_fit_name_the_buffer():
    w = AttentionWorkload(1, 2, 512, 512, 64)
    # streamed planes would stream again for every share of a tile, so the tile's scores must fit whole
    with pytest.raises(ScheduleError, match=r"score buffer needs 131072 bytes, edge has 32768"):
        check_fits(w, Schedule(128, 64, 1, 1, 1, "chunk"), CONFIGS["edge"])
    with pytest.raises(ScheduleError, match="threshold unit's 128 row lanes"):
        check_fits(dense_workload(w), Schedule(256, 64), CONFIGS["edge"])
    with pytest.raises(ScheduleError, match="multiple of 8"):
        Schedule(16, 60)


@pytest.mark.parametrize("seq, q_tile, score_kib, shares", [
    (512, 32, 32, [(0, 32)]),                          # INT16 scores of 32 rows fill 32 KiB: whole
    (512, 64, 32, [(0, 32), (32, 32)]),
    (512, 100, 32, [(0, 25), (25, 25), (50, 25), (75, 25)]),  # the fewest equal shares, not 32 + 32 + 32 + 4
    (1024, 64, 32, [(0, 16), (16, 16), (32, 16), (48, 16)]),
])
def test_a_tile_whose_scores_do_not_fit_is_filtered_in_equal_shares(seq, q_tile, score_kib, shares):
    cfg = CONFIGS["edge"]
    w = AttentionWorkload(1, 1, seq, seq, 32)
    plan = plan_tiling(w, Schedule(q_tile, 64, 1, 1, 1), cfg)
    assert plan.filter_tiles(plan.rows) == shares
    assert plan.usage()["score"] == shares[0][1] * seq * 2 <= score_kib * 1024
    assert plan_tiling(w, Schedule(q_tile, 64, 1, 1, 1, filter_mode="recompute"), cfg).filter_rows == plan.rows


def test_no_share_of_a_tile_fits_a_score_buffer_too_small_for_one_row():
    cfg = CONFIGS["edge"].replace(buffer_score=512)  # one row of 512 INT16 scores needs 1 KiB
    with pytest.raises(ScheduleError, match=r"score buffer needs 65536 bytes, edge has 512"):
        check_fits(AttentionWorkload(1, 1, 512, 512, 32), Schedule(64, 64, 1, 1, 1), cfg)


def test_heuristic_takes_the_fitting_schedule_its_cost_ranks_first():
    from energon_tvm.schedules.cost import cost_key
    from energon_tvm.schedules.schedule import candidate_schedules

    cfg = CONFIGS["edge"]
    w = AttentionWorkload(1, 12, 128, 128, 64)
    s = default_schedule(w, cfg)
    ranked = sorted(cost_key(plan_tiling(w, c, cfg), cfg) for c in candidate_schedules(w, cfg) if fits(w, c, cfg))
    assert cost_key(plan_tiling(w, s, cfg), cfg) == ranked[0]
    # a head's K and V (2 x 128 x 64 x 2 B = 32 KiB) fit the 64 KiB kv buffer: they stay resident
    assert s.kv_mode == "head" and s.plane_mode == "head" and s.filter_mode == "store"
    # at S=512 they take 128 KiB and cannot: chunk slots refilled per query tile. The rounds' scores fit
    # INT16 (64 x 2**3 x 2**3 = 4096), so the 32 KiB score buffer holds 32 rows of 512 keys: 64-row tiles
    # (the most the out buffer takes, 16 KiB / (64 x 64 x 4 B)), each gathering its rows' union once,
    # filter in two shares of 32
    w = AttentionWorkload(1, 12, 512, 512, 64)
    s = default_schedule(w, cfg)
    assert (s.kv_mode, s.filter_mode, s.q_tile) == ("chunk", "store", 64)
    assert plan_tiling(w, s, cfg).filter_rows == 32
    assert not fits(w, Schedule(8, 512, kv_mode="head"), cfg)
    assert plan_tiling(w, s, cfg).score_bytes == (2, 2)
    assert buffer_usage(w, Schedule(32, 512), cfg)["score"] == cfg.buffer("score")
    assert not fits(w, Schedule(64, 512), cfg)
    # a bias is added to the scores in the round's integer domain: INT32, half the rows
    biased = AttentionWorkload(1, 12, 512, 512, 64, bias_shape=(1, 1, 1, 512))
    assert plan_tiling(biased, s, cfg).score_bytes == (4, 4) and not fits(biased, Schedule(32, 512), cfg)


def test_kv_mode_is_a_replayable_knob_old_records_read_as_chunk_slots():
    old = {"q_tile": 32, "k_chunk": 128, "tile_slots": 2, "kv_slots": 2, "out_slots": 2, "plane_mode": "head",
           "filter_mode": "store"}
    assert Schedule.from_dict(old).kv_mode == "chunk"
    assert Schedule.from_dict(old).to_dict() == old  # a record without the knob is written as it was
    resident = Schedule.from_dict({**old, "kv_mode": "head"})
    assert resident.to_dict() == {**old, "kv_mode": "head"}
    with pytest.raises(ScheduleError, match="kv_mode = 'disk'"):
        Schedule(8, 8, kv_mode="disk")


def test_resident_kv_is_gathered_once_per_head_and_equals_reference():
    cfg = CONFIGS["edge"]
    for mask in ("none", "causal+padding"):
        w = build(1, 3, 70, 70, 32, mask)
        q, k, v, bias, full = inputs(w, 1)
        ref = mpmrf_attention(q, k, v, full, w.params)
        union = ref.kept[-1].reshape(3, 70, 70).any(axis=1).sum()  # (head, key) pairs some row keeps
        moved = {}
        for kv_mode in ("chunk", "head"):
            s = Schedule(16, 24, 3, 2, 2, "head", "store", kv_mode)
            out, res = run_attention(emit_program(w, s, cfg), cfg, q, k, v, bias)
            np.testing.assert_allclose(out, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())
            moved[kv_mode] = res.stats["dram_bytes"]["read"]["kv"]
        assert moved["head"] == union * 32 * 2 * 2  # every kept key's K and V rows once per head
        assert moved["chunk"] > moved["head"]  # query tiles share keys: chunk slots fetch them again


@pytest.mark.parametrize("bias_shape, loads", [((1, 1, 1, 70), 1), ((2, 1, 1, 70), 2), ((1, 3, 1, 70), 6),
                                               ((2, 3, 1, 70), 6)])
@pytest.mark.parametrize("causal", [False, True])
def test_a_padding_row_is_loaded_once_per_bias_group_and_equals_reference(bias_shape, loads, causal):
    """A bias broadcast over queries is loaded by the first tile of each run of tiles reading it (once for
    an encoder's [B, 1, 1, Sk] mask per batch element, per head where it has a row per head), and every
    tile reads its own run's row: a tile reading another run's slot would change the kept sets."""
    cfg = CONFIGS["edge"]
    w = AttentionWorkload(2, 3, 50, 70, 32, causal=causal, bias_shape=bias_shape)
    rng = np.random.default_rng(3)
    q, k, v = structured_qkv(rng, 2, 3, 50, 70, 32)
    bias = np.where(rng.random(bias_shape) < 0.4, -np.inf, 0.3 * rng.standard_normal(bias_shape)).astype(np.float32)
    full = np.broadcast_to(bias, (2, 3, 50, 70))
    if causal:
        full = full + np.where(np.arange(70)[None] <= np.arange(50)[:, None] + w.causal_shift, 0.0, -np.inf)
    ref = mpmrf_attention(q, k, v, full, w.params)
    for s in (Schedule(16, 24, 1, 1, 1, "chunk", "recompute"), Schedule(16, 72, 2, 2, 2, "head", "store"),
              Schedule(32, 24, 3, 2, 1, "head", "store", "head")):
        plan = plan_tiling(w, s, cfg)
        prog = emit_program(w, s, cfg)
        out, res = run_attention(prog, cfg, q, k, v, bias, capture=True)
        assert plan.bias_groups == loads
        assert res.stats["dram_bytes"]["read"]["bias"] == loads * 70 * 4  # each run's row, all its keys, once
        for r, kept in enumerate(ref.kept, 1):
            assert np.array_equal(res.captured[r].reshape(ref.kept[0].shape), kept), (s, r)
        np.testing.assert_allclose(out, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())


def test_schedule_records_replay_to_identical_bytes():
    cfg = CONFIGS["edge"]
    w = build(1, 2, 100, 90, 32, "causal+padding")
    s = default_schedule(w, cfg)
    record = json.loads(json.dumps({"workload": w.to_dict(), "schedule": s.to_dict()}))
    w2, s2 = AttentionWorkload.from_dict(record["workload"]), Schedule.from_dict(record["schedule"])
    assert (w2, s2) == (w, s)
    assert emit_program(w2, s2, cfg).to_bytes(cfg) == emit_program(w, s, cfg).to_bytes(cfg)


def test_causal_chunks_above_the_diagonal_are_skipped():
    cfg = CONFIGS["edge"]
    w = build(1, 1, 256, 256, 32, "causal")
    s = Schedule(32, 32)
    causal = emit_program(w, s, cfg)
    full = emit_program(build(1, 1, 256, 256, 32, "none"), s, cfg)
    count = lambda p, op: sum(i.op.mnemonic == op for i in p.code)  # noqa: E731
    assert count(causal, "A.ATTN") == sum(range(1, 9))  # tile t attends chunks 0..t
    assert count(full, "A.ATTN") == 8 * 8


def test_dense_baseline_and_critical_path():
    cfg = CONFIGS["edge"]
    w = build(1, 4, 128, 128, 32, "padding")
    q, k, v, bias, _ = inputs(w, 0)
    results = {}
    for name, work in (("mpmrf", w), ("dense", dense_workload(w))):
        prog = emit_program(work, default_schedule(work, cfg), cfg)
        _, res = run_attention(prog, cfg, q, k, v, bias, trace=True)
        path = critical_path(prog, res.events)
        assert path.cycles == res.cycles  # the path explains the whole run time
        results[name] = (res, path, prog)
    dense_res, dense_path, dense_prog = results["dense"]
    assert dense_path.bound_by == "attend"
    assert not any(i.op.mnemonic in ("F.SCORE", "LD.KP") for i in dense_prog.code)
    assert dense_res.stats["kept_ratio"] == []
    assert results["mpmrf"][0].cycles < dense_res.cycles
    g = dependency_graph(dense_prog)
    assert all(g.nodes[n]["unit"] in ("load", "filter", "attend", "store") for n in g)


def test_tiling_plan_is_the_layout_the_program_uses():
    cfg = CONFIGS["edge"]
    w = build(1, 2, 45, 67, 64, "causal+padding")
    s = Schedule(16, 24, tile_slots=3, kv_slots=2, out_slots=1, plane_mode="chunk")
    plan = plan_tiling(w, s, cfg)
    assert (plan.rows, plan.keys, plan.tiles, plan.key_chunks, plan.plane_slots) == (16, 24, 3, 3, 2)
    assert plan.usage() == buffer_usage(w, s, cfg)
    assert plan.buffers["q"] == BufferPlan(16 * 64 * 2, 3) and plan.buffers["bias"] == BufferPlan(72 * 4, 3)
    assert [t[:2] for t in plan.head_tiles()] == [(0, 16), (16, 16), (32, 13)]
    keep = w.causal_keep()  # a chunk is needed when any of its keys is a candidate of any of the tile's rows
    for q0, rows, _first, _last in plan.head_tiles():
        needed = [(k0, min(24, 67 - k0)) for k0 in range(0, 67, 24) if keep[q0:q0 + rows, k0:k0 + 24].any()]
        assert plan.chunks(q0, rows) == needed
    attends = sum(i.op.mnemonic == "A.ATTN" for i in emit_program(w, s, cfg).code)
    assert attends == w.heads * sum(plan.chunk_count(q0, rows) for q0, rows, _, _ in plan.head_tiles())


def test_cost_estimate_counts_what_a_plan_moves_and_computes():
    from energon_tvm.schedules.cost import estimate
    from energon_tvm.schedules.schedule import FILTER_MODES

    cfg = CONFIGS["edge"]
    # MP-MRF's rule at alpha 0, -0.25: the estimate assumes 1/3, then 1/2 of those, are kept
    w = AttentionWorkload(1, 12, 128, 128, 64, params=MPMRFParams.from_values("mpmrf", (0.0, -0.25)))
    est = {s: estimate(plan_tiling(w, s, cfg), cfg) for s in
           [Schedule(32, 128, 3, 2, 2, "head", mode, kv) for mode in FILTER_MODES for kv in ("chunk", "head")]}
    store, recompute = (est[Schedule(32, 128, 3, 2, 2, "head", m, "chunk")] for m in FILTER_MODES)
    compares = 3 * 12 * 128 * 128 / cfg.fu_select_per_cycle  # candidates, then each round's selection
    assert recompute.fu_cycles - compares == pytest.approx(2 * (store.fu_cycles - compares))
    chunk, resident = (est[Schedule(32, 128, 3, 2, 2, "head", "store", kv)] for kv in ("chunk", "head"))
    # four tiles a head, each gathering nearly every key with chunk slots; once a head when resident
    kv_once = 2 * 12 * 128 * 64 * 2
    assert chunk.dram_bytes - resident.dram_bytes == pytest.approx(
        kv_once * 4 * (1 - (1 - 1 / 6) ** 32) - kv_once * (1 - (1 - 1 / 6) ** 128))
