"""Top-k and Sanger's rule on the machine: the kept sets of every round against the reference bit for bit
(and against a direct reading of each rule's definition), whole-row selects (refused tilings, trapping
programs), the new instruction fields, and the compares they bill against the lower bound."""

import math
from dataclasses import replace

import numpy as np
import pytest
from energon_tvm.isa.asm import assemble, disassemble, format_instruction
from energon_tvm.isa.config import load_config
from energon_tvm.isa.encoding import decode, encode
from energon_tvm.isa.errors import BinaryFormatError, EncodingError, ScheduleError
from energon_tvm.isa.instructions import BY_MNEMONIC, ISA_VERSION, BiasMode, ThresholdRule, make
from energon_tvm.isa.numerics import KEEP_ONE, SANGER_EXP, FilterRound, MPMRFParams, to_fixed
from energon_tvm.isa.program import Program
from energon_tvm.runtime_sim import IllegalInstruction, Simulator, SparsityProfile
from energon_tvm.schedules import call_bound, check_program, default_schedule, emit_program, fits
from energon_tvm.schedules.cost import round_keep
from energon_tvm.schedules.schedule import Schedule, candidate_schedules, check_fits
from energon_tvm.schedules.workload import AttentionWorkload
from test_instructions import PARAM, SK, SQ, _filter_body, _numpy_scores, run
from test_programs import check_against_reference, make_inputs

from energon_tvm.mpmrf import int16_codes, mpmrf_attention

TOPK = MPMRFParams.for_policy("topk")      # Q4xK4, fraction 0.25
SANGER = MPMRFParams.for_policy("sanger")  # Q4xK4, probability 0.01
GAP_TOPK = MPMRFParams((FilterRound(4, 2, rule="gap", gap=6.0), FilterRound(4, 4, rule="topk", fraction=0.3)))
ALPHA_SANGER = MPMRFParams((FilterRound(4, 2, 0.0),
                            FilterRound(4, 4, rule="sanger", head_values=(0.001, 0.02, 0.2))))
POLICIES = {"topk": TOPK, "sanger": SANGER, "gap+topk": GAP_TOPK, "alpha+sanger-per-head": ALPHA_SANGER}
WORKLOADS = {
    "plain": lambda p: AttentionWorkload(1, 3, 40, 72, 32, params=p),
    "padding-b2": lambda p: AttentionWorkload(2, 3, 33, 50, 64, bias_shape=(2, 1, 1, 50), params=p),
    "causal": lambda p: AttentionWorkload(1, 3, 40, 56, 32, causal=True, params=p),
    "causal+padding": lambda p: AttentionWorkload(1, 3, 17, 40, 32, causal=True, bias_shape=(1, 1, 1, 40), params=p),
}
EDGE = load_config("edge")


@pytest.mark.parametrize("params", POLICIES.values(), ids=POLICIES.keys())
@pytest.mark.parametrize("workload", WORKLOADS.values(), ids=WORKLOADS.keys())
def test_ranking_rules_on_the_machine_equal_the_reference(cfg, params, workload):
    w = workload(params)
    _, res, ref = check_against_reference(w, cfg)
    assert 0 < ref.kept_ratio() < 1  # the rules select: a kept set equal to the candidates would prove little


@pytest.mark.parametrize("params", [GAP_TOPK, ALPHA_SANGER], ids=["gap+topk", "alpha+sanger-per-head"])
@pytest.mark.parametrize("schedule", [Schedule(8, 16, 1, 1, 1, "head", "recompute"),
                                      Schedule(16, 24, 3, 2, 1, "head", "store", "head"),
                                      Schedule(5, 8, 2, 1, 2, "head", "recompute", "head"),
                                      Schedule(40, 56, 2, 2, 1, "head", "store", "chunk")])
def test_ranking_rules_under_every_filter_and_kv_mode(cfg, params, schedule):
    w = AttentionWorkload(2, 3, 40, 56, 32, causal=True, bias_shape=(2, 1, 1, 56), params=params)
    prog, _, _ = check_against_reference(w, cfg, schedule)
    selects = [i for i in prog.code if i.op.mnemonic in ("F.SELECT", "F.RESELECT")]
    assert {i.keys for i in selects} == {56} and {i.k0 for i in selects} == {0}  # whole rows, in both rounds


def test_timing_only_runs_of_a_ranking_policy_give_the_same_cycles(cfg):
    w = WORKLOADS["causal+padding"](GAP_TOPK)
    prog, full, ref = check_against_reference(w, cfg)
    timed = Simulator(cfg).run(prog, profile=SparsityProfile.from_reference(ref))
    assert timed.stats == full.stats


# -- edge cases, against the rules read directly ----------------------------------------------------------
def _low_bit_scores(w, q, k, r):
    """Round ``r``'s integer scores of an unbiased workload and its candidates (the causal rule only)."""
    q16, _ = int16_codes(q)
    k16, _ = int16_codes(k)
    scores = (q16 >> (16 - r.q_bits)) @ np.swapaxes(k16 >> (16 - r.k_bits), -1, -2)
    cand = np.broadcast_to(w.causal_keep() if w.causal else np.ones((w.seq_q, w.seq_k), bool), scores.shape)
    return scores, cand


def _row_max(scores, cand):
    return cand & (scores == np.where(cand, scores, np.iinfo(np.int64).min).max(axis=-1, keepdims=True))


@pytest.mark.parametrize("r, keeps", [
    (FilterRound(4, 2, rule="topk", fraction=1.0), "all"),
    (FilterRound(4, 2, rule="topk", fraction=1 / KEEP_ONE), "max"),
    (FilterRound(4, 2, rule="sanger", probability=0.0), "all"),
    (FilterRound(4, 2, rule="sanger", probability=1.0), "max"),
], ids=["topk-1.0", "topk-1/65536", "sanger-0", "sanger-1.0"])
@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_extreme_values_keep_every_candidate_or_only_the_row_max(cfg, r, keeps, causal):
    w = AttentionWorkload(1, 3, 24, 40, 32, causal=causal, params=MPMRFParams((r,)))
    _, res, _ = check_against_reference(w, cfg)
    q, k, _, _, _ = make_inputs(w)
    scores, cand = _low_bit_scores(w, q, k, r)
    kept = res.captured[1].reshape(scores.shape)
    np.testing.assert_array_equal(kept, cand if keeps == "all" else _row_max(scores, cand))
    if keeps == "max":
        assert (kept.sum(axis=-1) > 1).any()  # some row has ties with its max, and keeps them all


def _topk_by_definition(s, cand, keep):
    """Top-k read off its definition, one row at a time in Python integers."""
    out = np.zeros_like(cand)
    for i in range(s.shape[0]):
        row = sorted((int(x) for x, c in zip(s[i], cand[i]) if c), reverse=True)
        if row:
            theta = row[max(1, math.ceil(keep * len(row) / KEEP_ONE)) - 1]
            out[i] = cand[i] & (s[i] >= theta)
    return out


def _sanger_by_definition(s, cand, unit, t):
    """Sanger's rule read off its definition, one row at a time; the table from ``math.exp``."""
    table = [math.floor(KEEP_ONE * math.exp(-i / 16)) for i in range(256)]
    out = np.zeros_like(cand)
    for i in range(s.shape[0]):
        keys = [j for j in range(s.shape[1]) if cand[i, j]]
        if not keys:
            continue
        best = max(int(s[i, j]) for j in keys)
        weight = {j: table[min(math.floor((best - int(s[i, j])) * unit * 16), 255)] for j in keys}
        total = sum(weight.values())
        for j in keys:
            out[i, j] = KEEP_ONE * weight[j] >= t * total or s[i, j] == best
    return out


def test_sanger_table_is_its_definition():
    assert SANGER_EXP.tolist() == [math.floor(65536 * math.exp(-i / 16)) for i in range(256)]


def _select_bits(r):
    raw = r.state.buf["index"].data[:SQ * 3].reshape(SQ, 3)
    return np.unpackbits(raw, axis=1)[:, :SK].astype(bool)


@pytest.mark.parametrize("mnemonic", ["F.SELECT", "F.RESELECT"])
@pytest.mark.parametrize("rule, keep", [(ThresholdRule.TOPK, 1), (ThresholdRule.TOPK, 20000),
                                        (ThresholdRule.TOPK, KEEP_ONE), (ThresholdRule.SANGER, 0),
                                        (ThresholdRule.SANGER, 900), (ThresholdRule.SANGER, 9000)])
def test_one_ranking_select_against_its_definition(cfg, mnemonic, rule, keep):
    """One tile, bias tile and causal candidates, head 1: the kept bits and the compares billed."""
    body = _filter_body(4, 4, BiasMode.TILE)
    fields = dict(round=1, alpha=0, rows=SQ, q0=0, k0=0, keys=SK, idx=0, head=1, rule=int(rule), keep=keep)
    if mnemonic == "F.SELECT":
        body.append(make("F.SELECT", sc=0, **fields))
    else:
        body.append(make("F.RESELECT", qb=4, kb=4, q=0, kp=0, bias=0, biasmode=int(BiasMode.TILE), **fields))
    r = run(cfg, body)
    s, cand = _numpy_scores(4, 4, BiasMode.TILE)
    unit = PARAM[1, 0] * 2.0 ** 12 * 2.0 ** 12
    expect = _topk_by_definition(s, cand, keep) if rule == ThresholdRule.TOPK else _sanger_by_definition(s, cand,
                                                                                                         unit, keep)
    np.testing.assert_array_equal(_select_bits(r), expect)
    assert 0 < expect.sum() < cand.sum() or keep in (0, KEEP_ONE)
    # F.CAND one compare per pair; the select 2 (top-k: ranking pass, select) or 3 (Sanger: lookup, sum, compare)
    assert r.stats["compares"] == SQ * SK * (1 + {ThresholdRule.TOPK: 2, ThresholdRule.SANGER: 3}[rule])


@pytest.mark.parametrize("mnemonic", ["F.SELECT", "F.RESELECT"])
@pytest.mark.parametrize("k0, keys", [(0, 16), (8, 16)], ids=["half-row", "offset"])
def test_a_ranking_select_over_part_of_a_row_traps(cfg, mnemonic, k0, keys):
    body = _filter_body(4, 4, BiasMode.NONE)
    fields = dict(round=1, alpha=0, rows=SQ, q0=0, k0=k0, keys=keys, idx=k0 // 8, head=1,
                  rule=int(ThresholdRule.SANGER), keep=655)
    if mnemonic == "F.SELECT":
        body.append(make("F.SELECT", sc=k0 * SQ * 4, **fields))
    else:
        body.append(make("F.RESELECT", qb=4, kb=4, q=0, kp=0, bias=0, **fields))
    with pytest.raises(IllegalInstruction) as err:
        run(cfg, body)
    msg = str(err.value)
    assert f"covers keys {k0}..{k0 + keys - 1} of SEQ_K = {SK}" in msg and "sees the whole row at once" in msg
    assert err.value.instruction.op.mnemonic == mnemonic
    # the same select under the gap rule is a legal chunk
    run(cfg, body[:-1] + [make(mnemonic, **{**body[-1].as_dict(), "rule": int(ThresholdRule.GAP), "gap": 64})])


# -- tilings that cannot filter whole rows -------------------------------------------------------------
def test_a_tiling_that_streams_planes_is_refused_for_ranking_rounds(cfg):
    w = WORKLOADS["causal+padding"](GAP_TOPK)
    chunked = Schedule(8, 16, 1, 1, 1, "chunk", "recompute")
    with pytest.raises(ScheduleError) as err:
        check_fits(w, chunked, cfg)
    msg = str(err.value)
    assert "topk round(s)" in msg and "plane_mode 'chunk'" in msg and "use policy mpmrf" in msg
    with pytest.raises(ScheduleError, match="use policy mpmrf"):
        emit_program(w, chunked, cfg)
    assert fits(replace(w, params=MPMRFParams()), chunked, cfg)  # the same tiling takes MP-MRF's rounds
    fitting = [s for s in candidate_schedules(w, cfg) if fits(w, s, cfg)]
    assert fitting and {s.plane_mode for s in fitting} == {"head"}
    assert default_schedule(w, cfg).plane_mode == "head"


def test_a_program_claiming_a_ranking_round_on_chunked_filtering_fails_validation(cfg):
    w = WORKLOADS["plain"](MPMRFParams())
    chunked = Schedule(8, 16, 1, 1, 1, "chunk")
    prog = emit_program(w, chunked, cfg)
    claimed = AttentionWorkload(1, 3, 40, 72, 32, params=SANGER)
    forged = Program.build(cfg, prog.code, prog.memory_map, {**prog.meta, "workload": claimed.to_dict()})
    with pytest.raises(BinaryFormatError, match="sanger round.*use policy mpmrf"):
        check_program(forged)


def test_per_row_bias_tiles_refuse_ranking_rounds_by_name(cfg):
    w = AttentionWorkload(1, 2, 24, 24, 32, bias_shape=(1, 2, 24, 24), params=SANGER)
    for call in (lambda: default_schedule(w, cfg), lambda: emit_program(w, Schedule(24, 24, 1, 1, 1, "head"), cfg)):
        with pytest.raises(ScheduleError) as err:
            call()
        assert "has a row per query" in str(err.value) and "use policy mpmrf" in str(err.value)


def test_planes_that_cannot_stay_resident_refuse_ranking_rounds_by_name():
    small = EDGE.replace(buffer_kplane=1024)
    w = AttentionWorkload(1, 1, 64, 512, 64, params=TOPK)
    with pytest.raises(ScheduleError) as err:
        default_schedule(w, small)
    assert "K bit-planes resident" in str(err.value) and "kplane buffer needs" in str(err.value)
    assert default_schedule(AttentionWorkload(1, 1, 64, 512, 64), small).plane_mode == "chunk"


# -- the instruction fields ----------------------------------------------------------------------------
def test_rule_and_keep_fields_round_trip(cfg):
    for op in ("F.SELECT", "F.RESELECT"):
        layout = {f.name: n for f, _, n in BY_MNEMONIC[op].layout(cfg)}
        assert (layout["rule"], layout["keep"]) == (2, 17)
    sel = make("F.SELECT", round=2, rows=8, q0=0, k0=0, keys=72, sc=0, idx=0, head=1, rule=int(ThresholdRule.TOPK),
               keep=KEEP_ONE, alpha=0, gap=0)
    resel = make("F.RESELECT", qb=4, kb=4, round=1, alpha=0, rows=8, q0=8, k0=0, keys=72, q=0, kp=0, idx=0, bias=0,
                 head=0, rule=int(ThresholdRule.SANGER), keep=655)
    for ins, text in ((sel, "rule=TOPK gap=0 keep=65536"), (resel, "rule=SANGER gap=0 keep=655")):
        assert text in format_instruction(ins, cfg)
        assert decode(encode(ins, cfg), cfg) == ins
    with pytest.raises(EncodingError, match="field keep = 65537 is outside 0..65536"):
        encode(make("F.SELECT", **{**sel.as_dict(), "keep": KEEP_ONE + 1}), cfg)
    w = WORKLOADS["padding-b2"](GAP_TOPK)
    prog = emit_program(w, default_schedule(w, cfg), cfg)
    text = disassemble(prog)
    assert f"rule=TOPK gap=0 keep={to_fixed('topk', 0.3)}" in text and "rule=GAP gap=384 keep=0" in text
    assert text.startswith(f"; Energon ISA v{ISA_VERSION} ") and ISA_VERSION == 3
    assert assemble(text, cfg) == prog
    assert Program.from_bytes(prog.to_bytes()) == prog
    blob = prog.to_bytes()
    with pytest.raises(BinaryFormatError, match="ISA version 1 is not supported"):
        Program.from_bytes(blob[:6] + (1).to_bytes(2, "little") + blob[8:])


# -- what the rules cost, and the bound ------------------------------------------------------------------
def test_keep_estimates_and_workload_keys():
    assert round_keep(FilterRound(4, 4, rule="topk", fraction=0.25)) == 0.25
    sanger = [round_keep(FilterRound(4, 4, rule="sanger", probability=p)) for p in (0.0, 0.001, 0.01, 0.1, 1.0)]
    assert sanger[0] == 1.0 and sanger == sorted(sanger, reverse=True) and 0.02 < sanger[2] < 0.07
    keys = {AttentionWorkload(1, 3, 16, 16, 32, params=p).key() for p in (TOPK, SANGER, GAP_TOPK, MPMRFParams())}
    assert len(keys) == 4
    assert "r[q4k4t16384]" in AttentionWorkload(1, 3, 16, 16, 32, params=TOPK).key()
    assert "r[q4k4p655]" in AttentionWorkload(1, 3, 16, 16, 32, params=SANGER).key()


def test_ranking_compares_in_the_bound_by_hand():
    # topk on one 8 x 16 head, D=8, every pair a candidate: 128 * 8 MACs at 512/cycle; compares: F.CAND 128,
    # the select 2 x 128 (ranking pass, select), at 64/cycle
    w = AttentionWorkload(1, 1, 8, 16, 8, params=TOPK)
    cand = np.ones((1, 8, 16), bool)
    kept = cand & (np.arange(16) < 4)
    b = call_bound(w, EDGE, [cand, kept])
    assert b.fu_cycles == math.ceil(128 * 8 / 512 + 3 * 128 / 64)
    # sanger under a causal mask: its select still compares every key of the row (36 causal pairs of 64)
    w = AttentionWorkload(1, 1, 8, 8, 8, causal=True, params=SANGER)
    cand = np.broadcast_to(w.causal_keep(), (1, 8, 8)).copy()
    b = call_bound(w, EDGE, [cand, cand & (np.arange(8) < 2)])
    assert b.fu_cycles == math.ceil(36 * 8 / 512 + (64 + 3 * 64) / 64)


@pytest.mark.parametrize("params", [TOPK, SANGER, GAP_TOPK], ids=["topk", "sanger", "gap+topk"])
@pytest.mark.parametrize("workload", ["plain", "causal+padding"])
def test_the_bound_stays_below_every_simulated_run(params, workload):
    w = WORKLOADS[workload](params)
    cfg = EDGE.replace(fu_select_per_cycle=4)  # compares bind the Filtering Unit
    q, k, v, _, full = make_inputs(w)
    profile = SparsityProfile.from_reference(mpmrf_attention(q, k, v, full, w.params, w.scale))
    bound = call_bound(w, cfg, profile)
    per_key = 1 + sum(ThresholdRule.of(r.rule).compares for r in w.params.rounds)
    for s in (default_schedule(w, cfg), Schedule(8, 16, 1, 1, 1, "head", "recompute"),
              Schedule(16, 24, 2, 2, 1, "head", "store", "head")):
        stats = Simulator(cfg).run(emit_program(w, s, cfg), profile=profile).stats
        # whole rows: every tile compares each key of its rows once per compare of the rules
        assert stats["compares"] == w.batch * w.heads * w.seq_q * w.seq_k * per_key
        assert stats["cycles"] >= bound.cycles and stats["units"]["filter"]["busy"] >= bound.fu_cycles
        assert bound.fu_cycles >= w.batch * w.heads * w.seq_q * w.seq_k * per_key / 4
