"""Whole programs against the MP-MRF reference, and timing-only runs against full runs."""

import numpy as np
import pytest
from energon_tvm.isa.asm import assemble, disassemble
from energon_tvm.runtime_sim import Simulator, SparsityProfile, layout_inputs, read_output, run_attention
from energon_tvm.schedules.emit import emit_program
from energon_tvm.schedules.schedule import Schedule, default_schedule, plan_tiling
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.mpmrf import FilterRound, MPMRFParams, mpmrf_attention
from energon_tvm.workloads import structured_qkv


def causal_mask(sq, sk):
    return np.where(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq), 0.0, -np.inf).astype(np.float32)


def make_inputs(w, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = structured_qkv(rng, w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim)
    bias = None
    if w.bias_shape is not None:
        shape = w.bias_shape
        bias = np.where(rng.random(shape) < 0.2, -np.inf, 0.0).astype(np.float32)
        if w.mask_kind.endswith("bias"):
            bias = np.where(np.isfinite(bias), rng.standard_normal(shape), bias).astype(np.float32)
    full = bias
    if w.causal:
        full = causal_mask(w.seq_q, w.seq_k) if bias is None else bias + causal_mask(w.seq_q, w.seq_k)
    return q, k, v, bias, full


def check_against_reference(w, cfg, schedule=None, seed=0):
    q, k, v, bias, full = make_inputs(w, seed)
    prog = emit_program(w, schedule or default_schedule(w, cfg), cfg)
    out, res = run_attention(prog, cfg, q, k, v, bias, capture=True)
    ref = mpmrf_attention(q, k, v, full, w.params, w.scale)
    shape = ref.candidates.shape
    np.testing.assert_array_equal(res.captured[0].reshape(shape), ref.candidates)
    for r, kept in enumerate(ref.kept, 1):
        np.testing.assert_array_equal(res.captured[r].reshape(shape), kept, err_msg=f"round {r}")
    np.testing.assert_allclose(out, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())
    assert res.stats["kept_ratio"] == pytest.approx(ref.kept_ratios())
    return prog, res, ref


@pytest.mark.parametrize("w", [
    AttentionWorkload(1, 2, 40, 72, 32),
    AttentionWorkload(2, 3, 33, 50, 64, bias_shape=(2, 1, 1, 50)),
    AttentionWorkload(1, 2, 24, 24, 32, bias_shape=(1, 2, 24, 24)),
    AttentionWorkload(1, 1, 70, 70, 128, causal=True),
    AttentionWorkload(1, 2, 17, 40, 32, causal=True, bias_shape=(1, 1, 1, 40)),
    AttentionWorkload(1, 2, 48, 48, 32, params=MPMRFParams((FilterRound(2, 1, -0.2), FilterRound(4, 2, 0.1),
                                                              FilterRound(8, 4, 0.3)))),
    AttentionWorkload(1, 2, 48, 48, 32, params=MPMRFParams(())),
    AttentionWorkload(1, 2, 48, 48, 32, scale=0.05),
], ids=lambda w: f"{w.mask_kind}-{w.batch}x{w.heads}x{w.seq_q}x{w.seq_k}x{w.head_dim}-r{len(w.params.rounds)}")
def test_scheduled_programs_equal_reference(cfg, w):
    check_against_reference(w, cfg)


@pytest.mark.parametrize("schedule", [Schedule(8, 16, 1, 1, 1, "chunk"), Schedule(16, 24, 3, 2, 1, "head"),
                                      Schedule(5, 8, 2, 1, 2, "chunk"), Schedule(8, 16, 2, 2, 2, "chunk", "recompute"),
                                      Schedule(40, 32, 1, 2, 1, "head", "recompute"),
                                      # K/V resident per head: LD.KVR fetches each kept key once per head
                                      Schedule(8, 16, 1, 1, 1, "chunk", kv_mode="head"),
                                      Schedule(16, 24, 3, 2, 1, "head", kv_mode="head"),
                                      Schedule(5, 8, 2, 1, 2, "chunk", "recompute", "head"),
                                      Schedule(40, 56, 2, 2, 1, "head", "recompute", "head")])
def test_every_schedule_knob_computes_the_same(cfg, schedule):
    w = AttentionWorkload(1, 2, 40, 56, 32, causal=True)
    check_against_reference(w, cfg, schedule)


@pytest.mark.parametrize("w, schedule, shares, bias_buffer", [
    # INT16 scores of 512 keys: 32 rows fill the 32 KiB score buffer, so a 64-row tile filters in two shares
    (AttentionWorkload(1, 2, 96, 512, 32), Schedule(64, 128, 2, 2, 1), 2, None),
    # a per-row bias: INT32 scores, 16 rows a share, four to a tile; each share reads its own bias rows
    # and applies the causal rule from its own first row (edge's bias buffer holds 8 such rows, so the
    # tile needs a larger one)
    (AttentionWorkload(1, 1, 80, 512, 32, causal=True, bias_shape=(1, 1, 80, 512)), Schedule(64, 128, 1, 1, 1), 4,
     64 * 512 * 4),
    # a padding row shared by every row, the whole key row in one instruction
    (AttentionWorkload(1, 2, 72, 512, 32, bias_shape=(1, 1, 1, 512)), Schedule(64, 512, 2, 1, 1), 4, None),
], ids=["int16", "row-bias-causal", "padding-whole-row"])
def test_filter_shares_of_a_tile_compute_the_same(cfg, w, schedule, shares, bias_buffer):
    """A query tile whose stored scores do not fit the score buffer is filtered in shares that reuse it;
    gathers and attention still take the whole tile."""
    if bias_buffer:
        cfg = cfg.replace(buffer_bias=bias_buffer)
    plan = plan_tiling(w, schedule, cfg)
    assert len(plan.filter_tiles(plan.rows)) == shares and plan.rows == 64
    prog, _, _ = check_against_reference(w, cfg, schedule)

    def rows(mnemonic):
        return {i.rows for i in prog.code if i.op.mnemonic == mnemonic}

    last = w.seq_q - 64  # the head's second, shorter tile
    assert rows("F.SELECT") == {64 // shares, min(last, 64 // shares)}
    assert rows("F.CAND") == rows("A.ATTN") == rows("LD.KV") == {64, last}


def _load_order(prog):
    """(mnemonic, label) of the loader's instructions, in program order."""
    return [(i.op.mnemonic, prog.labels[pc]) for pc, i in enumerate(prog.code)
            if i.op.unit is not None and i.op.unit.name == "LOAD" and i.op.mnemonic.startswith("LD.")]


@pytest.mark.parametrize("tile_slots", [2, 3])
def test_dense_gathers_open_before_the_prefetch_that_waits_for_a_tile_slot(cfg, tile_slots):
    """Dense, K/V in chunk slots: a tile's first chunk is gathered before the loader's prefetch that
    waits for the previous tile's attention (its kept bits are ready long before), and the program
    still computes the reference."""
    w = AttentionWorkload(1, 2, 64, 64, 32, params=MPMRFParams(()))
    schedule = Schedule(16, 16, tile_slots, 2, 1)
    prog, _, _ = check_against_reference(w, cfg, schedule)
    order = _load_order(prog)
    prefetch = ("LD.Q", f"h0 q{16 * tile_slots}-{16 * tile_slots + 15}")  # tile 1 + lead - 1, lead = tile_slots
    opening, second = ("LD.KV", "h0 q16-31 k0-15"), ("LD.KV", "h0 q16-31 k16-31")  # tile 1's first two chunks
    assert order.index(opening) < order.index(prefetch) < order.index(second)
    # with filter rounds the prefetch goes first: the kept bits may come late
    mp = emit_program(AttentionWorkload(1, 2, 64, 64, 32), schedule, cfg)
    order = _load_order(mp)
    assert order.index(prefetch) < order.index(opening)


def test_attention_of_the_next_tile_does_not_wait_for_the_store(cfg):
    """With one output slot, only A.NORM waits for the previous tile's store: the online softmax runs
    in the Attention Unit's own state, so the next tile's attention overlaps the store."""
    w = AttentionWorkload(1, 1, 64, 64, 32)
    prog = emit_program(w, Schedule(32, 64, 2, 2, 1), cfg)
    q, k, v, _, _ = make_inputs(w)
    res = Simulator(cfg).run(prog, layout_inputs(prog, q, k, v), trace=True)
    spans = {(m, label): (t0, t1) for _u, _pc, m, t0, t1, label in res.events}
    store0, attn1 = spans[("ST.OUT", "h0 q0-31")], spans[("A.ATTN", "h0 q32-63 k0-63")]
    assert attn1[0] < store0[1]  # attention of tile 1 runs while tile 0 is stored
    assert spans[("A.NORM", "h0 q32-63")][0] >= store0[1]  # ... and normalises into its slot after


def test_hand_written_assembly_program(cfg):
    """A program written as assembler text (one tile, one chunk, one filter round) against the reference."""
    w = AttentionWorkload(1, 1, 8, 16, 32, params=MPMRFParams((FilterRound(4, 2, 0.0),)))
    mm = emit_program(w, Schedule(8, 16, 1, 1, 1), cfg).memory_map
    text = f"""
    .config edge
    {''.join(f'.region {r.name} offset={r.offset:#x} dtype={r.dtype} shape={",".join(map(str, r.shape))} layout=x'
             + chr(10) for r in mm.regions)}
    .meta {{"scale": {w.effective_scale!r}}}
    setr reg=head_dim value=32
    setr reg=seq_q value=8
    setr reg=seq_k value=16
    setr reg=v_offset value=64                ; K and V rows interleaved per key (D * 2 bytes each)
    setr reg=kv_stride value=128
    setr reg=causal_shift value=0
    ld.param dram={mm["param"].offset:#x} heads=1 buf=0
    ld.q     dram={mm["q"].offset:#x} rows=8 buf=0
    ld.kp    dram={mm["kplanes"].offset:#x} keys=16 plane_lo=0 plane_hi=2 buf=0
    signal   unit=load token=0                 ; Q and K planes are in
    wait     unit=filter token=0
    f.cand   rows=8 q0=0 k0=0 keys=16 idx=0 bias=0 head=0
    f.score  qb=4 kb=2 rows=8 q=0 kp=0 keys=16 sc=0 idx=0 bias=0 head=0 first=1
    f.select round=1 alpha=0 rows=8 q0=0 k0=0 keys=16 sc=0 idx=0 head=0
    signal   unit=filter token=1               ; kept bits ready for the gather
    signal   unit=filter token=2               ; ... and for the attention unit
    wait     unit=load token=1
    ld.kv    dram={mm["kv"].offset:#x} keys=16 rows=8 idx=0 buf=0
    signal   unit=load token=3
    wait     unit=attend token=2
    a.init   rows=8
    wait     unit=attend token=3
    a.attn   rows=8 q=0 keys=16 kv=0 idx=0 bias=0 head=0
    a.norm   rows=8 out=0 head=0
    signal   unit=attend token=4
    wait     unit=store token=4
    st.out   dram={mm["out"].offset:#x} rows=8 buf=0
    halt
    """
    prog = assemble(text, cfg)
    q, k, v, _, _ = make_inputs(w, seed=3)
    result = Simulator(cfg).run(prog, layout_inputs(prog, q, k, v))
    ref = mpmrf_attention(q, k, v, None, w.params)
    np.testing.assert_allclose(read_output(prog, result), ref.output, rtol=1e-5, atol=1e-7)
    assert result.stats["kept_ratio"] == pytest.approx(ref.kept_ratios())
    assert assemble(disassemble(prog), cfg) == prog


@pytest.mark.parametrize("w, schedule", [
    (AttentionWorkload(2, 3, 33, 50, 64, bias_shape=(2, 1, 1, 50)), None),
    (AttentionWorkload(1, 2, 40, 56, 32, causal=True), Schedule(8, 16, 2, 2, 2, "chunk")),
    (AttentionWorkload(1, 2, 40, 56, 32, bias_shape=(1, 2, 40, 56)), Schedule(8, 16, 2, 2, 2, "chunk", "recompute")),
    (AttentionWorkload(1, 2, 40, 56, 32, causal=True, bias_shape=(1, 1, 1, 56)),
     Schedule(8, 16, 3, 2, 2, "head", "store", "head")),
])
def test_timing_only_mode_gives_the_same_cycles(cfg, w, schedule):
    prog, full, ref = check_against_reference(w, cfg, schedule)
    profile = SparsityProfile.from_reference(ref)
    timed = Simulator(cfg).run(prog, profile=profile)
    assert timed.dram is None
    assert timed.stats == full.stats


def test_profile_round_trips_through_a_file(tmp_path, cfg):
    w = AttentionWorkload(1, 2, 16, 24, 32)
    _, _, ref = check_against_reference(w, cfg)
    profile = SparsityProfile.from_reference(ref)
    profile.save(tmp_path / "p.npz")
    loaded = SparsityProfile.load(tmp_path / "p.npz")
    assert all(np.array_equal(a, b) for a, b in zip(profile.masks, loaded.masks))
    assert loaded.kept_ratios() == pytest.approx(ref.kept_ratios())
