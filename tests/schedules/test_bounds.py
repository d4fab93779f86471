"""Lower bounds of a call: exact on hand-computed cases, and never above what a simulated schedule takes."""

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import ScheduleError
from energon_tvm.isa.numerics import RULE_RANGE, RULE_VALUE, FilterRound, MPMRFParams
from energon_tvm.runtime_sim import Simulator, SparsityProfile
from energon_tvm.schedules import (
    AttentionWorkload,
    Schedule,
    call_bound,
    call_bound_from_counts,
    call_bound_from_stats,
    default_schedule,
    emit_program,
    fits,
    total_bound,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from energon_tvm.mpmrf import mpmrf_attention

EDGE, SERVER = load_config("edge"), load_config("server")
CONFIGS = [
    EDGE,
    SERVER,
    EDGE.replace(dram_bandwidth_gbps=3.2),
    EDGE.replace(fu_macs_per_cycle=32, fu_select_per_cycle=4),
    EDGE.replace(au_macs_per_cycle=8, au_exp_per_cycle=1),
    # small buffers: few query rows per tile, K planes streamed, gathered K/V not resident
    EDGE.replace(buffer_q=1024, buffer_kv=4096, buffer_kplane=1024, buffer_index=256),
    SERVER.replace(buffer_kv=8192, buffer_kplane=2048, dram_bandwidth_gbps=25.6),
    # every transfer's latency overlapped by many more in flight: the bound must hold however deep
    EDGE.replace(dram_outstanding_requests=256, dram_bandwidth_gbps=102.4),
    SERVER.replace(dram_outstanding_requests=1),
]
DENSE = MPMRFParams(())


def simulate(w, schedule, cfg, masks):
    return Simulator(cfg).run(emit_program(w, schedule, cfg), profile=SparsityProfile(tuple(masks))).stats


def dram_moved(stats):
    return stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]


def test_dense_single_tile_by_hand():
    w = AttentionWorkload(1, 1, 8, 8, 8, params=DENSE)
    b = call_bound(w, EDGE, [np.ones((1, 8, 8), bool)])
    # FU: 64 compares at 64/cycle; AU: max(2*64*8 MACs / 128, (64 + 8) exps / 8) + 8*8 norms / 128 = 9.5
    assert (b.fu_cycles, b.au_cycles) == (1, 10)
    # Q 128 + K 128 + V 128 + params 16 + out 256 bytes; 2+2+2+1+4 bursts of 64 B at 25.6 B/cycle
    assert (b.compulsory_dram_bytes, b.tiling_min_dram_bytes, b.dram_cycles) == (656, 656, 28)
    assert (b.cycles, b.binds) == (EDGE.dram_latency_cycles + 28, "dram")
    assert call_bound_from_counts(w, EDGE, 64, []) == changed(b, from_counts=True)
    assert b.format(256) == "2.00x the bound (dram binds)"
    assert b.format(256, 1312) == "2.00x the bound (dram binds); DRAM 2.00x the tiling minimum"
    # energy: 64 candidate compares; 1,024 MACs, 72 exponentials, 64 divides; Q written and read once
    # (128 B each way), K and V gathered and read once (256 B each way), the output written and stored
    # (256 B each way); the 656 DRAM bytes; leakage over the bound's cycles
    e, sram = EDGE.energy, lambda buf: e.sram_per_byte(EDGE.buffer(buf))
    expected = (64 * e.fu_compare + 1024 * e.au_mac_16b + 72 * e.au_exp + 64 * e.au_div
                + 256 * sram("q") + 512 * sram("kv") + 512 * sram("out") + 656 * e.dram_per_byte
                + e.leakage_mw * b.cycles / EDGE.clock_ghz)
    assert b.energy_pj == pytest.approx(expected, rel=1e-12)
    assert b.format(256, None, 2 * expected) == "2.00x the bound (dram binds); energy 2.00x its bound"


def changed(b, **changes):
    from dataclasses import replace

    return replace(b, **changes)


def test_gathered_kv_restreamed_per_query_tile_when_it_cannot_stay_resident():
    # 64 B of Q buffer hold 4 rows of D=8: 8 queries need 2 tiles; 256 B of kv hold one 8-key chunk, not
    # the head's 16 keys, so each tile gathers the 16 keys its rows keep
    cfg = EDGE.replace(buffer_q=64, buffer_kv=256)
    w = AttentionWorkload(1, 1, 8, 16, 8, params=DENSE)
    masks = [np.ones((1, 8, 16), bool)]
    b = call_bound(w, cfg, masks)
    assert b.compulsory_dram_bytes == 128 + 2 * 16 * 16 + 16 + 256
    assert b.tiling_min_dram_bytes == b.compulsory_dram_bytes + 2 * 16 * 16
    assert b.dram_cycles == 58  # (2 + 1 + 4 + 2 * 8) bursts * 2.5 cycles
    assert (b.fu_cycles, b.au_cycles, b.binds) == (2, 18, "dram")
    stats = simulate(w, default_schedule(w, cfg), cfg, masks)
    assert dram_moved(stats) >= b.tiling_min_dram_bytes and stats["cycles"] >= b.cycles
    # with room for the head's K/V the tiling minimum falls back to the compulsory bytes
    roomy = call_bound(w, cfg.replace(buffer_kv=512), masks)
    assert roomy.tiling_min_dram_bytes == roomy.compulsory_dram_bytes


def _compositions(n: int, most: int):
    """Every split of n consecutive rows into runs of 1..most rows (lengths in order)."""
    if n == 0:
        yield ()
        return
    for first in range(1, min(most, n) + 1):
        for rest in _compositions(n - first, most):
            yield (first,) + rest


def test_tile_loads_is_the_fewest_over_every_split_into_consecutive_tiles():
    from energon_tvm.schedules.bounds import tile_loads

    rng = np.random.default_rng(3)
    for _ in range(60):
        heads, sq, sk, rows = int(rng.integers(1, 3)), int(rng.integers(1, 10)), int(rng.integers(1, 12)), \
            int(rng.integers(1, 5))
        m = rng.random((heads, sq, sk)) < rng.random()
        want = []
        for h in range(heads):  # enumerate the splits: no recurrence shared with the implementation
            costs = []
            for split in _compositions(sq, rows):
                edges = np.cumsum((0,) + split)
                costs.append(sum(int(m[h, a:b].any(axis=0).sum()) for a, b in zip(edges[:-1], edges[1:])))
            want.append(min(costs))
        assert tile_loads(m, rows).tolist() == want
    # rows that keep disjoint keys gain nothing from sharing a tile; identical rows load their keys once
    eye = np.eye(6, dtype=bool)[None]
    assert tile_loads(eye, 3).tolist() == [6]
    assert tile_loads(np.ones((1, 6, 5), bool), 4).tolist() == [10]  # ceil(6 / 4) tiles x 5 keys


def test_filter_rounds_by_hand():
    # one round Q4xK2 on edge: candidates = the causal pairs (36 of 8x8); the FU scores each once
    w = AttentionWorkload(1, 1, 8, 8, 8, causal=True, params=MPMRFParams((FilterRound(4, 2, 0.0),)))
    cand = np.broadcast_to(w.causal_keep(), (1, 8, 8)).copy()
    kept = cand & (np.arange(8)[None, None, :] < 2)  # keys 0 and 1 kept: 15 pairs
    b = call_bound(w, EDGE, [cand, kept])
    # 36 * 8 MACs at 512/cycle + 2 * 36 compares at 64/cycle
    assert b.fu_cycles == int(np.ceil(36 * 8 / 512 + 2 * 36 / 64))
    # max(2 * 15 * 8 / 128, (15 + 8) / 8) + 64 / 128
    assert b.au_cycles == int(np.ceil(max(2 * 15 * 8 / 128, 23 / 8) + 0.5))
    # planes: 2 bits x 8 keys x 1 byte; K/V: 2 kept keys
    assert b.compulsory_dram_bytes == 128 + 2 * 8 + 2 * 2 * 16 + 16 + 256
    counts = call_bound_from_counts(w, EDGE, 36, [15])
    assert counts.from_counts and counts.fu_cycles == b.fu_cycles and counts.au_cycles == b.au_cycles
    # from counts the 15 kept pairs could sit on the two keys every row may keep: the same union here
    assert counts.compulsory_dram_bytes == b.compulsory_dram_bytes


def test_counts_give_a_weaker_bound_than_masks():
    rng = np.random.default_rng(1)
    w = AttentionWorkload(1, 2, 32, 48, 16, causal=True)
    masks = reference_masks(w, rng, None)
    full = call_bound(w, EDGE, masks)
    stats = {"candidates": int(masks[0].sum()), "kept_per_round": [int(m.sum()) for m in masks[1:]]}
    weak = call_bound_from_stats(w, EDGE, stats)
    assert weak.from_counts and not full.from_counts
    for field in ("fu_cycles", "au_cycles", "dram_cycles", "compulsory_dram_bytes", "tiling_min_dram_bytes", "cycles"):
        assert getattr(weak, field) <= getattr(full, field), field
    assert (weak.fu_cycles, weak.au_cycles) == (full.fu_cycles, full.au_cycles)  # both depend on counts only


def test_total_bound_adds_calls_and_names_the_most_binding_unit():
    w = AttentionWorkload(1, 1, 8, 8, 8, params=DENSE)
    a = call_bound(w, EDGE, [np.ones((1, 8, 8), bool)])
    b = changed(a, cycles=1000, binds="attention")
    t = total_bound([a, a, b])
    assert t.cycles == 2 * a.cycles + 1000 and t.binds == "attention"
    assert t.tiling_min_dram_bytes == 3 * a.tiling_min_dram_bytes


@pytest.mark.parametrize("call, message", [
    (lambda w: call_bound(w, EDGE, [np.ones((1, 8, 8), bool)] * 4), "needs 3"),
    (lambda w: call_bound(w, EDGE, [np.ones((1, 8, 8), bool)] * 2 + [np.ones((1, 8, 9), bool)]), "[1, 8, 9]"),
    (lambda w: call_bound(w, EDGE, [np.zeros((1, 8, 8), bool), np.ones((1, 8, 8), bool),
                                    np.zeros((1, 8, 8), bool)]), "is not a candidate of round 1"),
    (lambda w: call_bound_from_counts(w, EDGE, 64, [65, 1]), "round 1 keeps 65 pairs of 64"),
    (lambda w: call_bound_from_counts(w, EDGE, 65, [1, 1]), "65 candidate pairs"),
    (lambda w: call_bound_from_counts(w, EDGE, 64, [1]), "1 kept count(s) given"),
])
def test_rejects_sparsity_that_does_not_belong_to_the_workload(call, message):
    w = AttentionWorkload(1, 1, 8, 8, 8)  # the default two rounds
    with pytest.raises(ScheduleError) as err:
        call(w)
    assert message in str(err.value)


def test_causal_candidates_outside_the_diagonal_are_rejected():
    w = AttentionWorkload(1, 1, 8, 8, 8, causal=True, params=DENSE)
    with pytest.raises(ScheduleError, match="excluded by the causal rule"):
        call_bound(w, EDGE, [np.ones((1, 8, 8), bool)])


# -- the property: no schedule beats the bound -----------------------------------------------------------
def reference_masks(w, rng, bias):
    """The candidate and kept masks of the numpy reference on random Q/K/V, as the tuner's profiles."""
    q = rng.standard_normal((w.batch, w.heads, w.seq_q, w.head_dim)).astype(np.float32)
    k, v = (rng.standard_normal((w.batch, w.heads, w.seq_k, w.head_dim)).astype(np.float32) for _ in range(2))
    full = bias
    if w.causal:
        causal = np.where(w.causal_keep(), 0.0, -np.inf).astype(np.float32)
        full = causal if full is None else full + causal
    return SparsityProfile.from_reference(mpmrf_attention(q, k, v, full, w.params, w.scale)).masks


ROUND = st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([1, 2, 4, 8]), st.floats(-1, 1))
#: a round's threshold rule and its value (in the rule's range); MP-MRF's rule takes the drawn alpha
RULE = st.sampled_from(["mpmrf", "gap", "topk", "sanger"]).flatmap(
    lambda rule: st.tuples(st.just(rule), st.floats(*RULE_RANGE[rule])))


@st.composite
def cases(draw):
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    sq, sk = draw(st.integers(1, 40)), draw(st.integers(1, 48))
    d = 8 * draw(st.integers(1, 8))
    rounds = draw(st.lists(ROUND, max_size=3))
    qbits, kbits = sorted(r[0] for r in rounds), sorted(r[1] for r in rounds)  # bits never shrink
    rules = [draw(RULE) for _ in rounds]
    params = MPMRFParams(tuple(
        FilterRound(qb, kb, a) if rule == "mpmrf" else FilterRound(qb, kb, rule=rule, **{RULE_VALUE[rule]: value})
        for qb, kb, (_, _, a), (rule, value) in zip(qbits, kbits, rounds, rules)))
    causal, mask = draw(st.booleans()), draw(st.sampled_from(["none", "padding", "bias"]))
    bias_shape = {"none": None, "padding": (b, 1, 1, sk), "bias": (1, h, sq, sk)}[mask]
    w = AttentionWorkload(b, h, sq, sk, d, causal=causal, bias_shape=bias_shape, params=params)
    cfg = draw(st.sampled_from(CONFIGS))
    schedule = Schedule(draw(st.integers(1, sq)), 8 * draw(st.integers(1, -(-sk // 8))), draw(st.integers(1, 3)),
                        draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.sampled_from(["head", "chunk"])),
                        draw(st.sampled_from(["store", "recompute"])), draw(st.sampled_from(["chunk", "head"])))
    return w, cfg, schedule, draw(st.integers(0, 2**31))


def random_bias(w, rng):
    if w.bias_shape is None:
        return None
    bias = rng.standard_normal(w.bias_shape).astype(np.float32)
    return np.where(rng.random(w.bias_shape) < 0.3, -np.inf, bias).astype(np.float32)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_no_schedule_beats_the_bound(case):
    w, cfg, schedule, seed = case
    try:
        heuristic = default_schedule(w, cfg)
    except ScheduleError:
        assume(False)
    rng = np.random.default_rng(seed)
    masks = reference_masks(w, rng, random_bias(w, rng))
    bound = call_bound(w, cfg, masks)
    weak = call_bound_from_counts(w, cfg, int(masks[0].sum()), [int(m.sum()) for m in masks[1:]])
    assert bound.tiling_min_dram_bytes >= bound.compulsory_dram_bytes
    assert weak.cycles <= bound.cycles and weak.tiling_min_dram_bytes <= bound.tiling_min_dram_bytes
    assert weak.energy_pj <= bound.energy_pj * (1 + 1e-12)
    for s in [heuristic] + ([schedule] if fits(w, schedule, cfg) else []):
        stats = simulate(w, s, cfg, masks)
        where = f"{w.key()} on {cfg.name} with {s.to_json()}: {stats['cycles']} cycles vs {bound}"
        assert stats["cycles"] >= bound.cycles, where
        assert dram_moved(stats) >= bound.tiling_min_dram_bytes, where
        assert stats["units"]["filter"]["busy"] >= bound.fu_cycles, where
        assert stats["units"]["attend"]["busy"] >= bound.au_cycles, where
        assert stats["energy_pj"]["total"] >= bound.energy_pj * (1 - 1e-12), where
