"""The MP-MRF reference against independent computations and its defining properties."""

from dataclasses import replace

import numpy as np
import pytest
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.mpmrf import (
    FilterRound,
    MPMRFParams,
    float_attention,
    mpmrf_attention,
    reference_attention,
    workload_mask,
)


def _qkv(rng, b=2, h=3, sq=24, sk=40, d=32, structured=True):
    q = rng.standard_normal((b, h, sq, d)).astype(np.float32)
    k = rng.standard_normal((b, h, sk, d)).astype(np.float32)
    v = rng.standard_normal((b, h, sk, d)).astype(np.float32)
    if structured:  # a few keys aligned with the queries, as trained attention has
        k[..., :4, :] += 2.0 * q.mean(axis=2, keepdims=True)
    return q, k, v


def _dense_int16(q, k, v, mask, scale):
    """Dense INT16 attention written out independently: int64 einsum, float64 softmax."""
    def quant(x):
        s = np.abs(x.astype(np.float64)).max(axis=(2, 3), keepdims=True) / 32767
        return np.clip(np.rint(x / s), -32767, 32767).astype(np.int64), s
    q16, sq = quant(q)
    k16, sk = quant(k)
    v16, sv = quant(v)
    logits = np.einsum("bhqd,bhkd->bhqk", q16, k16).astype(np.float64) * (sq * sk * scale)
    m = np.broadcast_to(mask, logits.shape)
    logits = np.where(m > -1e4, logits + m, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (np.einsum("bhqk,bhkd->bhqd", p, v16.astype(np.float64)) * sv).astype(np.float32)


def _padding_mask(rng, b, sk):
    mask = np.zeros((b, 1, 1, sk), np.float32)
    for i in range(b):
        mask[i, ..., sk - rng.integers(0, sk // 2):] = -np.inf
    return mask


@pytest.mark.parametrize("d", [32, 64, 128])
def test_alpha_minus_one_is_dense_int16_exactly(d):
    rng = np.random.default_rng(d)
    q, k, v = _qkv(rng, d=d)
    mask = _padding_mask(rng, 2, 40)
    res = mpmrf_attention(q, k, v, mask, MPMRFParams.dense(2))
    assert all(np.array_equal(kept, res.candidates) for kept in res.kept)
    expect = _dense_int16(q, k, v, mask, 1 / np.sqrt(d))
    np.testing.assert_allclose(res.output, expect, rtol=1e-6, atol=1e-7)


def quantization_error_bound(q, k, v, scale):
    """Per (b, h) bound on |dense INT16 attention - float attention|, elementwise.

    With |x - sx x16| <= sx / 2 per element, each logit moves by at most
    delta = scale * D * (Qmax sk / 2 + Kmax sq / 2 + sq sk / 4). Shifting every logit by at most delta
    scales each softmax weight by a factor within [e^-2delta, e^2delta], so the weights move by
    at most (e^2delta - 1) in total (l1); the outputs move by at most
    (e^2delta - 1) * Vmax + sv / 2 (the last term from V's own rounding).
    """
    d = q.shape[-1]
    amax = lambda x: np.abs(x.astype(np.float64)).max(axis=(2, 3))  # noqa: E731
    sq, sk, sv = amax(q) / 32767, amax(k) / 32767, amax(v) / 32767
    delta = scale * d * (amax(q) * sk / 2 + amax(k) * sq / 2 + sq * sk / 4)
    return ((np.exp(2 * delta) - 1) * amax(v) + sv / 2)[..., None, None]


@pytest.mark.parametrize("d", [32, 64, 128])
def test_dense_int16_matches_float_within_derived_bound(d):
    rng = np.random.default_rng(10 + d)
    q, k, v = _qkv(rng, d=d)
    mask = _padding_mask(rng, 2, 40)
    res = mpmrf_attention(q, k, v, mask, MPMRFParams.dense(2))
    ref = float_attention(q, k, v, mask)
    err = np.abs(res.output.astype(np.float64) - ref)
    bound = quantization_error_bound(q, k, v, 1 / np.sqrt(d))
    assert np.all(err <= bound + 1e-6)
    assert err.max() > 0  # the bound is not vacuous: quantisation does change the output


@pytest.mark.parametrize("mask_shape", [None, (2, 1, 1, 40), (2, 1, 24, 40), (24, 40)])
def test_masked_never_kept_and_row_max_survives(mask_shape):
    rng = np.random.default_rng(1)
    q, k, v = _qkv(rng)
    mask = None
    if mask_shape is not None:
        mask = np.where(rng.random(mask_shape) < 0.3, -np.inf, 0.0).astype(np.float32)
        mask[..., 0] = 0.0  # every row keeps at least one key
        mask[..., 1] = -1e4  # the threshold itself counts as masked
    params = MPMRFParams((FilterRound(4, 2, 0.5), FilterRound(4, 4, 0.9)))
    res = mpmrf_attention(q, k, v, mask, params)
    masked = np.zeros((2, 3, 24, 40), bool) if mask is None else np.broadcast_to(mask <= -1e4, (2, 3, 24, 40))
    prev = res.candidates
    assert np.array_equal(prev, ~masked)
    for i, (kept, rnd) in enumerate(zip(res.kept, params.rounds)):
        assert not np.any(kept & masked)
        assert np.all(kept <= prev)  # a round only removes candidates
        # the row maximum of this round's integer scores (without bias: the mask is 0/-inf) survives
        q16 = np.clip(np.rint(q / (np.abs(q).max((2, 3), keepdims=True) / 32767)), -32767, 32767)
        k16 = np.clip(np.rint(k / (np.abs(k).max((2, 3), keepdims=True) / 32767)), -32767, 32767)
        s = np.einsum("bhqd,bhkd->bhqk", q16.astype(np.int64) >> (16 - rnd.q_bits),
                      k16.astype(np.int64) >> (16 - rnd.k_bits))
        best = np.where(prev, s, np.iinfo(np.int64).min).max(-1, keepdims=True)
        has = prev.any(-1)
        assert np.all((kept & (s == best)).any(-1)[has]), f"round {i + 1} lost a row maximum"
        prev = kept


def test_kept_ratio_non_increasing_in_alpha():
    rng = np.random.default_rng(2)
    q, k, v = _qkv(rng, sq=64, sk=96, d=64)
    ratios = []
    for alpha in np.linspace(-1, 1, 21):
        res = mpmrf_attention(q, k, v, None, MPMRFParams((FilterRound(4, 4, float(alpha)),)))
        ratios.append(res.kept_ratio())
    assert ratios[0] == 1.0
    assert all(a >= b for a, b in zip(ratios, ratios[1:]))
    assert ratios[-1] < 0.2


def test_sq_differs_from_sk_and_kept_ratio_axes():
    rng = np.random.default_rng(3)
    q, k, v = _qkv(rng, sq=5, sk=77)
    res = mpmrf_attention(q, k, v)
    assert res.output.shape == (2, 3, 5, 32)
    assert res.kept[0].shape == (2, 3, 5, 77)
    per_head = res.kept_ratio(axis=(0, 2))
    assert per_head.shape == (3,)
    assert 0 < res.kept_ratio() <= res.kept_ratio(0) <= 1


def test_fully_masked_row_outputs_zero():
    rng = np.random.default_rng(4)
    q, k, v = _qkv(rng, b=1, h=1, sq=3, sk=8)
    mask = np.zeros((3, 8), np.float32)
    mask[1] = -np.inf
    res = mpmrf_attention(q, k, v, mask)
    assert np.all(res.output[0, 0, 1] == 0)
    assert not res.final_kept[0, 0, 1].any()
    assert np.all(float_attention(q, k, v, mask)[0, 0, 1] == 0)


def test_bias_is_carried_into_filter_scores():
    rng = np.random.default_rng(5)
    q, k, v = _qkv(rng, b=1, h=1, sq=16, sk=32, structured=False)
    bias = np.zeros((16, 32), np.float32)
    bias[:, 7] = 50.0  # a strong positive bias makes key 7 the row maximum everywhere
    res = mpmrf_attention(q, k, v, bias, MPMRFParams((FilterRound(4, 2, 0.99),)))
    assert res.final_kept[0, 0, :, 7].all()


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "q": np.full_like(a["q"], np.nan)}, "q contains NaN"),
        (lambda a: {**a, "k": a["k"][:, :, :, :16]}, "does not match q shape"),
        (lambda a: {**a, "v": a["v"][:, :, :3]}, "v shape"),
        (lambda a: {**a, "mask": np.zeros((7, 9), np.float32)}, "does not broadcast"),
        (lambda a: {**a, "mask": np.full((8, 8), np.nan, np.float32)}, "mask contains NaN"),
        (lambda a: {**a, "q": a["q"][0]}, "4-d array"),
    ],
)
def test_bad_input_raises_value_error(change, match):
    rng = np.random.default_rng(6)
    q, k, v = _qkv(rng, b=1, h=1, sq=8, sk=8)
    args = change({"q": q, "k": k, "v": v, "mask": None})
    with pytest.raises(ValueError, match=match):
        mpmrf_attention(**args)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FilterRound(0, 2, 0.0), "q_bits = 0"),
        (lambda: FilterRound(4, 17, 0.0), "k_bits = 17"),
        (lambda: FilterRound(4, 4, 1.5), "alpha = 1.5"),
        (lambda: FilterRound(4, 4, -1.01), "alpha = -1.01"),
        (lambda: MPMRFParams((FilterRound(4, 4, 0.0), FilterRound(4, 2, 0.0))), "fewer bits than round 1"),
        (lambda: MPMRFParams.from_alphas([0.1]), "1 alpha value"),
    ],
)
def test_bad_parameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_any_number_of_rounds():
    rng = np.random.default_rng(7)
    q, k, v = _qkv(rng)
    params = MPMRFParams((FilterRound(2, 1, -0.5), FilterRound(4, 2, 0.0), FilterRound(8, 4, 0.2)))
    res = mpmrf_attention(q, k, v, None, params)
    assert len(res.kept) == 3
    ratios = res.kept_ratios()
    assert ratios == sorted(ratios, reverse=True)
    res0 = mpmrf_attention(q, k, v, None, MPMRFParams(()))
    assert res0.kept == () and res0.final_kept.all()


def test_round_view_rule_is_a_reference_only_alternative():
    from energon_tvm.isa.config import load_config
    from energon_tvm.isa.errors import ScheduleError
    from energon_tvm.schedules import AttentionWorkload, default_schedule

    rng = np.random.default_rng(8)
    q, k, v = _qkv(rng)
    msb = mpmrf_attention(q, k, v, None, MPMRFParams())
    rnd = mpmrf_attention(q, k, v, None, MPMRFParams().with_view("round"))
    assert not all(np.array_equal(a, b) for a, b in zip(msb.kept, rnd.kept))
    assert MPMRFParams.from_dict(MPMRFParams().with_view("round").to_dict()).view == "round"
    with pytest.raises(ValueError, match="view rule 'ceil'"):
        MPMRFParams(view="ceil")
    w = AttentionWorkload(1, 1, 8, 8, 32, params=MPMRFParams().with_view("round"))
    with pytest.raises(ScheduleError, match="'msb' rule only"):
        default_schedule(w, load_config("edge"))


def _call_mask_oracle(bias, sq, sk, causal):
    """The mask of one call written out entry by entry: the bias, and -inf for a causal workload's keys
    after q + (Sk - Sq)."""
    b, h = bias.shape[0], bias.shape[1]
    out = np.empty((b, h, sq, sk), np.float32)
    for i in range(b):
        for j in range(h):
            for qi in range(sq):
                for ki in range(sk):
                    hidden = causal and ki > qi + sk - sq
                    out[i, j, qi, ki] = -np.inf if hidden else bias[i, j, min(qi, bias.shape[2] - 1), ki]
    return out


@pytest.mark.parametrize("sq, sk", [(5, 9), (7, 7)])
def test_workload_mask_is_the_bias_plus_the_causal_diagonal(sq, sk):
    rng = np.random.default_rng(sq)
    bias = rng.standard_normal((2, 1, 1, sk))  # float64 in: the mask is float32 whatever the bias
    w = AttentionWorkload(2, 3, sq, sk, 32, causal=True, bias_shape=bias.shape)
    mask = workload_mask(w, bias)
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(np.broadcast_to(mask, (2, 1, sq, sk)), _call_mask_oracle(bias, sq, sk, True))
    zeros = np.zeros((1, 1, 1, sk))
    causal_only = workload_mask(replace(w, bias_shape=None))
    assert causal_only.dtype == np.float32
    np.testing.assert_array_equal(np.broadcast_to(causal_only, (1, 1, sq, sk)), _call_mask_oracle(zeros, sq, sk, True))
    not_causal = replace(w, causal=False)
    np.testing.assert_array_equal(workload_mask(not_causal, bias), bias.astype(np.float32))
    assert workload_mask(replace(not_causal, bias_shape=None)) is None


def test_reference_attention_runs_the_call_with_its_mask_parameters_and_scale():
    rng = np.random.default_rng(12)
    q, k, v = _qkv(rng, b=1, h=2, sq=12, sk=20, d=32)
    bias = (0.5 * rng.standard_normal((1, 2, 12, 20))).astype(np.float32)
    bias[..., 3] = -np.inf  # a padded key
    mask = _call_mask_oracle(bias, 12, 20, causal=True)
    w = AttentionWorkload(1, 2, 12, 20, 32, causal=True, bias_shape=bias.shape, params=MPMRFParams.dense(2))
    # dense parameters: the independent dense INT16 oracle, with the default scale and an explicit one
    for work, scale in ((w, 1 / np.sqrt(32)), (replace(w, scale=0.3), 0.3)):
        res = reference_attention(work, q, k, v, bias)
        np.testing.assert_array_equal(res.candidates, np.isfinite(mask))
        np.testing.assert_allclose(res.output, _dense_int16(q, k, v, mask, scale), rtol=1e-6, atol=1e-7)
    # filtering parameters: exactly MP-MRF on the oracle mask; the workload's effective scale and
    # mpmrf_attention's own default (scale None) are the same number
    w = replace(w, params=MPMRFParams())
    res = reference_attention(w, q, k, v, bias)
    ref = mpmrf_attention(q, k, v, mask, w.params, w.scale)
    assert w.scale is None and len(res.kept) == 2
    assert np.array_equal(res.output, ref.output)
    assert all(np.array_equal(a, b) for a, b in zip(res.kept, ref.kept))
