"""The gap rule and per-head thresholds: the machine against the reference bit for bit, the reference
against a direct reading of its definition, and the fixed-point forms."""

import numpy as np
import pytest
from energon_tvm.isa.errors import ScheduleError
from energon_tvm.isa.numerics import GAP_MAX, FilterRound, MPMRFParams
from energon_tvm.schedules.schedule import Schedule
from energon_tvm.schedules.workload import AttentionWorkload
from test_programs import check_against_reference, make_inputs

from energon_tvm.mpmrf import int16_codes, mpmrf_attention

GAP = MPMRFParams((FilterRound(4, 2, rule="gap", gap=6.0), FilterRound(4, 4, rule="gap", gap=2.5)))
PER_HEAD_GAP = MPMRFParams((FilterRound(4, 2, rule="gap", head_values=(9.0, 3.0, 0.0)),
                            FilterRound(4, 4, rule="gap", head_values=(4.0, 1.5, 0.25))))
PER_HEAD_ALPHA = MPMRFParams((FilterRound(4, 2, head_values=(-0.5, 0.0, 0.25)),
                              FilterRound(4, 4, head_values=(0.5, -1.0, -0.125))))
MIXED = MPMRFParams((FilterRound(4, 2, 0.0), FilterRound(4, 4, rule="gap", head_values=(2.0, 5.0, 1.0))))


@pytest.mark.parametrize("params", [GAP, PER_HEAD_GAP, PER_HEAD_ALPHA, MIXED], ids=["gap", "gap-per-head",
                                                                               "alpha-per-head", "mixed"])
@pytest.mark.parametrize("w", [
    lambda p: AttentionWorkload(1, 3, 40, 72, 32, params=p),
    lambda p: AttentionWorkload(2, 3, 33, 50, 64, bias_shape=(2, 1, 1, 50), params=p),
    lambda p: AttentionWorkload(1, 3, 24, 24, 32, bias_shape=(1, 3, 24, 24), params=p),
    lambda p: AttentionWorkload(1, 3, 17, 40, 32, causal=True, bias_shape=(1, 1, 1, 40), params=p),
], ids=["plain", "padding-b2", "bias", "causal+padding"])
def test_threshold_rules_on_the_machine_equal_the_reference(cfg, params, w):
    check_against_reference(w(params), cfg)


@pytest.mark.parametrize("schedule", [Schedule(8, 16, 1, 1, 1, "chunk", "recompute"),
                                      Schedule(16, 24, 3, 2, 1, "head", kv_mode="head"),
                                      Schedule(5, 8, 2, 1, 2, "chunk", "recompute", "head")])
def test_per_head_gap_under_every_filter_mode(cfg, schedule):
    check_against_reference(AttentionWorkload(2, 3, 40, 56, 32, causal=True, params=PER_HEAD_GAP), cfg, schedule)


def _gap_by_definition(q, k, mask, gaps, bits, scale):
    """Round 1 of the gap rule read off its definition, one row at a time in Python integers."""
    q16, sq = int16_codes(q)
    k16, sk = int16_codes(k)
    qb, kb = bits
    out = np.zeros(q.shape[:3] + (k.shape[2],), bool)
    for b, h, i in np.ndindex(*q.shape[:3]):
        unit = float(sq[b, h, 0, 0] * sk[b, h, 0, 0] * scale) * 2.0 ** (16 - qb) * 2.0 ** (16 - kb)
        scores = [int(np.dot(q16[b, h, i] >> (16 - qb), k16[b, h, j] >> (16 - kb))) for j in range(k.shape[2])]
        cand = [mask[j] > -1e4 for j in range(k.shape[2])]
        best = max(s for s, c in zip(scores, cand) if c)
        steps = int(np.floor(round(gaps[h] * 64) / (64 * unit)))
        out[b, h, i] = [c and s >= best - steps for s, c in zip(scores, cand)]
    return out


def test_gap_rule_reads_as_its_definition():
    rng = np.random.default_rng(3)
    q, k, v = (rng.standard_normal((1, 3, 12, 32)).astype(np.float32) for _ in range(3))
    mask = np.where(rng.random(12) < 0.25, -np.inf, 0.0).astype(np.float32)
    gaps = (0.0, 1.5, 7.25)
    params = MPMRFParams((FilterRound(4, 2, rule="gap", head_values=gaps),))
    res = mpmrf_attention(q, k, v, mask, params)
    np.testing.assert_array_equal(res.kept[0], _gap_by_definition(q, k, mask, gaps, (4, 2), 32 ** -0.5))
    ratio = res.kept_ratio(0, axis=(0, 2))
    assert ratio[0] < ratio[1] < ratio[2]  # a wider gap keeps more; gap 0 keeps the ties with the best


def test_gap_zero_keeps_the_best_and_the_widest_gap_keeps_nearly_all():
    w = AttentionWorkload(1, 3, 32, 64, 32)
    q, k, v, _, _ = make_inputs(w, seed=5)
    top = mpmrf_attention(q, k, v, None, MPMRFParams((FilterRound(4, 4, rule="gap", gap=0.0),)))
    assert top.final_kept.any(axis=-1).all()  # every row keeps at least its best key
    assert top.kept_ratio() < 0.2
    wide = mpmrf_attention(q, k, v, None, MPMRFParams((FilterRound(4, 4, rule="gap", gap=GAP_MAX),)))
    assert wide.kept_ratio() > 0.99


def test_per_head_values_equal_one_call_per_head():
    w = AttentionWorkload(2, 3, 20, 30, 32)
    q, k, v, _, _ = make_inputs(w, seed=1)
    res = mpmrf_attention(q, k, v, None, PER_HEAD_GAP)
    for h in range(3):
        one = MPMRFParams(tuple(FilterRound(r.q_bits, r.k_bits, rule="gap", gap=r.head_values[h])
                                for r in PER_HEAD_GAP.rounds))
        alone = mpmrf_attention(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], None, one)
        np.testing.assert_array_equal(res.final_kept[:, h:h + 1], alone.final_kept)
        np.testing.assert_array_equal(res.output[:, h:h + 1], alone.output)


def test_head_values_must_match_the_workload_heads():
    with pytest.raises(ScheduleError, match="3 per-head threshold values for an attention of 4 heads"):
        AttentionWorkload(1, 4, 16, 16, 32, params=PER_HEAD_GAP)
    q = np.ones((1, 2, 4, 32), np.float32)
    with pytest.raises(ValueError, match="3 per-head threshold values for an attention of 2 heads"):
        mpmrf_attention(q, q, q, None, PER_HEAD_GAP)


@pytest.mark.parametrize("kwargs, message", [
    ({"rule": "gap", "gap": -0.5}, r"gap = -0.5 must be a number in \[0, 63.98"),
    ({"rule": "gap", "gap": 64.0}, "must be a number in"),
    ({"rule": "best"}, "threshold rule 'best' is not one of mpmrf, gap, topk, sanger"),
    ({"head_values": (0.0, 1.5)}, r"head 1 alpha = 1.5 must be a number in \[-1, 1\]"),
    ({"rule": "gap", "head_values": ()}, "head_values is empty"),
    ({"rule": "gap", "head_values": (1.0, True)}, "head 1 gap = True"),
])
def test_bad_thresholds_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FilterRound(4, 4, **kwargs)


def test_params_round_trip_through_their_dict():
    for params in (MPMRFParams(), GAP, PER_HEAD_GAP, PER_HEAD_ALPHA, MIXED, MPMRFParams(())):
        assert MPMRFParams.from_dict(params.to_dict()) == params
    # MP-MRF's rule with one value keeps the original [q_bits, k_bits, alpha] form
    assert MPMRFParams((FilterRound(4, 2, 0.5),)).to_dict() == {"rounds": [[4, 2, 0.5]]}
    with pytest.raises(ValueError, match="threshold rule 'best' is not one of"):
        MPMRFParams.from_dict({"rounds": [{"bits": [4, 2], "rule": "best", "value": 1.0}]})


def test_workload_keys_tell_rules_and_head_values_apart():
    keys = {AttentionWorkload(1, 3, 16, 16, 32, params=p).key() for p in (GAP, PER_HEAD_GAP, PER_HEAD_ALPHA, MIXED)}
    assert len(keys) == 4
    assert "q4k2g384" in AttentionWorkload(1, 3, 16, 16, 32, params=GAP).key()
