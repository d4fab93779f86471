"""The MP-MRF reference: the numpy oracle every other part of energon-tvm is checked against.

Mix-Precision Multi-Round Filtering (DESIGN.md section 5), per batch b and head h, with Q [Sq, D],
K [Sk, D], V [Sk, D], an optional additive mask/bias M broadcastable to [Sq, Sk] and a scale s
(default 1/sqrt(D)):

1. Quantise Q, K, V to INT16, symmetric, one scale per (b, h) tensor:
   ``x16 = clip(rint(x / sx), -32767, 32767)``, ``sx = max|x| / 32767`` (``sx = 1`` for an all-zero x).
2. Low-precision views are the most significant bits of the codes: ``x_b = x16 >> (16 - b)`` (the
   ``msb`` rule, what the machine's bit-planes give; ``MPMRFParams(view="round")`` rounds to nearest
   instead, for comparison).
3. Candidates C start as the keys whose mask entry is above -1e4. Round r (q_bits, k_bits, alpha)
   computes integer scores ``q_qb . k_kb`` plus the bias quantised into that round's integer domain,
   ``rint(M / (sq * sk * s * 2**(16 - qb) * 2**(16 - kb)))``, the sum saturated to INT32 (the
   Filtering Unit's score width), over each row's candidates, then keeps
   the candidates whose score x satisfies ``x >= theta``, theta set by the round's rule:

   * ``mpmrf``: with mean m, max X and min mu of the row's candidate scores, ``theta = m + a * (X - m)``
     for a >= 0, ``theta = m + a * (m - mu)`` for a < 0. The threshold unit holds alpha in fixed point,
     ``a = rint(alpha * 1024) / 1024``, and compares exactly in integers:
     ``1024 n x >= 1024 S + A (n X - S)`` (resp. ``A (S - n mu)``), where n is the candidate count, S their
     score sum and A = 1024 a; that is ``x >= ceil((1024 S + A spread) / (1024 n))``.
   * ``gap``: ``theta = X - G`` with ``G = floor(g / (64 u))`` in FP64, g = rint(gap * 64) the gap in
     1/64 logits and ``u = sq * sk * s * 2**(16 - qb) * 2**(16 - kb)`` the logits one score step stands
     for: the keys whose estimated logit is within ``gap`` of the row's best.
   * ``topk``: theta is the k-th largest candidate score of the row, ``k = max(1, ceil(f n / 65536))``,
     f = rint(fraction * 65536); keys tied with the k-th are kept too.
   * ``sanger``: with ``d = X - x`` a candidate's score steps below the row's best, its weight in the
     predicted softmax is ``e = SANGER_EXP[min(floor(d u 16), 255)]`` (``floor(65536 exp(-i / 16))``)
     and it is kept when ``65536 e >= t sum(e)`` over the row's candidates, t = rint(probability *
     65536), or when d = 0. theta is the lowest score kept: e falls as the score does.

   A round's threshold value may differ per head (``FilterRound.head_values``). The row maximum always
   survives.
4. Attention over the survivors in high precision: exact integer ``q16 . k16`` rescaled by
   ``sq * sk * s``, plus M; softmax over the survivors; output ``sum p * v16 * sv`` (float32). A row
   with no survivor outputs zeros.

alpha = -1 in every round keeps every unmasked key: that is the dense INT16 baseline. Everything is
vectorised over batch, heads and rows; integer dot products are done as float64 matrix products, exact
because every partial sum stays below 2**53.

:func:`reference_attention` is what one offloaded call computes by this definition: its workload's
parameters and scale, the call's bias plus the causal mask the accelerator adds (:func:`workload_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .isa.numerics import (
    ALPHA_ONE,
    GAP_ONE,
    KEEP_ONE,
    MASK_THRESHOLD,
    RANKING_RULES,
    SANGER_EXP,
    SANGER_STEPS,
    FilterRound,
    MPMRFParams,
    from_fixed,
    to_fixed,
)

if TYPE_CHECKING:
    from .schedules.workload import AttentionWorkload

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

__all__ = ["FilterRound", "MPMRFParams", "MPMRFResult", "float_attention", "from_fixed", "head_fixed", "int16_codes",
           "mpmrf_attention", "reference_attention", "round_scores", "row_threshold", "to_fixed", "unit_scale",
           "workload_mask"]


@dataclass(frozen=True)
class MPMRFResult:
    """Output [B, H, Sq, D] float32, the initial candidates and the kept mask after every round
    (bool [B, H, Sq, Sk]); ``kept[-1]`` is the set attention ran over."""

    output: np.ndarray
    candidates: np.ndarray
    kept: tuple[np.ndarray, ...]

    @property
    def final_kept(self) -> np.ndarray:
        return self.kept[-1] if self.kept else self.candidates

    def kept_ratio(self, round_index: int | None = None, axis=None) -> np.ndarray | float:
        """Kept pairs over candidate pairs after round ``round_index`` (default: the last), reduced over
        ``axis`` of [B, H, Sq] (None: one number; (0, 2): per head; ...)."""
        kept = self.final_kept if round_index is None else self.kept[round_index]
        n_cand = self.candidates.sum(axis=-1)
        n_kept = kept.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.sum(n_kept, axis=axis) / np.sum(n_cand, axis=axis)
        return float(ratio) if np.ndim(ratio) == 0 else ratio

    def kept_ratios(self) -> list[float]:
        return [self.kept_ratio(i) for i in range(len(self.kept))]


def _check_inputs(q, k, v, mask):
    arrays = {"q": q, "k": k, "v": v}
    for name, x in arrays.items():
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"{name} must be a 4-d array [B, H, S, D]; got shape {np.shape(x)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name} must be floating point; got {x.dtype}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name} contains NaN or infinite values")
    b, h, sq, d = q.shape
    if k.shape[:2] != (b, h) or k.shape[3] != d:
        raise ValueError(f"k shape {k.shape} does not match q shape {q.shape} (B, H and D must agree)")
    if v.shape != k.shape:
        raise ValueError(f"v shape {v.shape} must equal k shape {k.shape}")
    sk = k.shape[2]
    if mask is None:
        return np.zeros((1, 1, 1, sk))
    mask = np.asarray(mask)
    if mask.ndim > 4 or not np.issubdtype(mask.dtype, np.floating):
        raise ValueError(f"mask must be a floating-point array of at most 4 dims; got {mask.dtype} "
                         f"{mask.shape}")
    if np.any(np.isnan(mask)):
        raise ValueError("mask contains NaN")
    try:
        np.broadcast_shapes(mask.shape, (b, h, sq, sk))
    except ValueError:
        raise ValueError(f"mask shape {mask.shape} does not broadcast to [B, H, Sq, Sk] = "
                         f"{[b, h, sq, sk]}") from None
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)


def int16_codes(x) -> tuple[np.ndarray, np.ndarray]:
    """INT16 codes of x [B, H, S, D] (as int64) and their scale [B, H, 1, 1] (float64), one per (b, h)."""
    amax = np.max(np.abs(x.astype(np.float64)), axis=(2, 3), keepdims=True)
    s = np.where(amax > 0, amax / 32767.0, 1.0)
    return np.clip(np.rint(x / s), -32767, 32767).astype(np.int64), s


def _matmul_t(a, b):
    """a @ b^T over stacked matrices, in float64. Both operands are made C-contiguous first: numpy's
    stacked matmul leaves BLAS for a slow generic loop on a transposed view (~200x slower)."""
    return np.matmul(np.ascontiguousarray(a, dtype=np.float64),
                     np.ascontiguousarray(np.swapaxes(b, -1, -2), dtype=np.float64))


def _int_matmul(a, b):
    """Exact integer a @ b^T via float64 (|partial sums| < 2**53 for INT16 x INT16 x D <= 2**22)."""
    return _matmul_t(a, b).astype(np.int64)


def _view(x16, bits, rule):
    """The ``bits``-bit low-precision view of INT16 codes: the MSBs (``msb``), or round-to-nearest
    (``round``, saturated to the b-bit range)."""
    if rule == "msb" or bits == 16:
        return x16 >> (16 - bits)
    half = 1 << (15 - bits)
    return np.clip((x16 + half) >> (16 - bits), -(1 << (bits - 1)), (1 << (bits - 1)) - 1)


def unit_scale(qk_scale, r: FilterRound) -> np.ndarray:
    """The logits one integer score step of round ``r`` stands for: ``qk_scale * 2**(16-qb) * 2**(16-kb)``."""
    return qk_scale * float(2 ** (16 - r.q_bits)) * float(2 ** (16 - r.k_bits))


def round_scores(q16, k16, bias, qk_scale, r: FilterRound, view: str = "msb") -> np.ndarray:
    """Round ``r``'s integer scores [B, H, Sq, Sk]: the low-bit views' dot products plus the bias (float64,
    masked entries 0) quantised into the round's integer domain, saturated to INT32."""
    qv, kv = _view(q16, r.q_bits, view), _view(k16, r.k_bits, view)
    bias_int = np.clip(np.rint(bias / unit_scale(qk_scale, r)), INT32_MIN, INT32_MAX).astype(np.int64)
    return np.clip(_int_matmul(qv, kv) + bias_int, INT32_MIN, INT32_MAX)


def row_threshold(scores, cand, rule: str, fixed, unit) -> np.ndarray:
    """Every row's threshold theta (int64 [..., Sq, 1]; keep ``cand & (scores >= theta)``) under ``rule``
    with the fixed-point threshold value ``fixed`` (alpha * 1024, gap * 64, fraction or probability *
    65536) broadcastable against [..., B, H, 1, 1]: for mpmrf and gap a leading grid axis gives one
    threshold per grid value. ``unit`` [B, H, 1, 1] is
    :func:`unit_scale`. Rows without candidates get an arbitrary theta (nothing to keep)."""
    big = np.iinfo(np.int64).max
    hi = np.where(cand, scores, -big).max(axis=-1, keepdims=True)
    fixed = np.asarray(fixed, dtype=np.int64)
    if rule in RANKING_RULES and fixed.ndim > cand.ndim:
        raise ValueError(f"the {rule} rule takes one threshold value per head, not a grid of them")
    if rule == "topk":
        n = cand.sum(axis=-1, keepdims=True).astype(np.int64)
        k = np.minimum(np.maximum(1, -(-(fixed * n) // KEEP_ONE)), scores.shape[-1])  # [..., Sq, 1]
        ranked = -np.sort(-np.where(cand, scores, -big), axis=-1)  # descending, non-candidates last
        return np.where(n > 0, np.take_along_axis(ranked, k - 1, axis=-1), big)
    if rule == "sanger":
        steps = np.where(cand, hi - scores, 0).astype(np.float64)  # d >= 0 on candidates
        index = np.minimum(np.floor(steps * np.asarray(unit, np.float64) * SANGER_STEPS), len(SANGER_EXP) - 1)
        weight = np.where(cand, SANGER_EXP[index.astype(np.int64)], 0)
        total = weight.sum(axis=-1, keepdims=True)
        keep = cand & ((KEEP_ONE * weight >= fixed * total) | (steps == 0))
        return np.where(keep, scores, big).min(axis=-1, keepdims=True)
    if rule == "gap":
        gap = np.floor(fixed / (GAP_ONE * np.asarray(unit, np.float64)))
        hi = np.maximum(hi, INT32_MIN)  # a row without candidates: no wrap-around below -2**63
        return hi - np.clip(gap, 0, 2.0 ** 40).astype(np.int64)
    if rule != "mpmrf":
        raise ValueError(f"threshold rule {rule!r} is not mpmrf, gap, topk or sanger")
    n = cand.sum(axis=-1, keepdims=True).astype(np.int64)
    total = np.where(cand, scores, 0).sum(axis=-1, keepdims=True)
    lo = np.where(cand, scores, big).min(axis=-1, keepdims=True)
    spread = np.where(fixed >= 0, n * hi - total, total - n * lo)
    rhs = ALPHA_ONE * total + fixed * spread
    return -(-rhs // (ALPHA_ONE * np.maximum(n, 1)))


def head_fixed(rule: str, values) -> np.ndarray:
    """The fixed-point threshold value of every head under ``rule`` (``FilterRound.values``), shaped
    [1, H, 1, 1] to broadcast against [B, H, Sq, Sk]."""
    values = list(values)
    return np.array([to_fixed(rule, v) for v in values], np.int64).reshape(1, len(values), 1, 1)


def mpmrf_attention(q, k, v, mask=None, params: MPMRFParams | None = None,
                    scale: float | None = None) -> MPMRFResult:
    """Run MP-MRF on Q [B,H,Sq,D], K/V [B,H,Sk,D] with an additive ``mask`` broadcastable to
    [B,H,Sq,Sk]. See the module docstring for the exact definition."""
    params = MPMRFParams() if params is None else params
    if not isinstance(params, MPMRFParams):
        raise ValueError(f"params must be MPMRFParams, got {type(params).__name__}")
    mask = _check_inputs(q, k, v, mask)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale = {scale!r} must be a positive finite number")

    q16, sq_ = int16_codes(q)
    k16, sk_ = int16_codes(k)
    v16, sv_ = int16_codes(v)
    qk_scale = sq_ * sk_ * scale  # [B, H, 1, 1]

    bias = np.broadcast_to(mask.astype(np.float64), (b, h, sq, sk))
    cand = bias > MASK_THRESHOLD
    bias = np.where(cand, bias, 0.0)

    kept_rounds = []
    kept = cand
    for r in params.rounds:
        try:
            fixed = head_fixed(r.rule, r.values(h))
        except ValueError as err:
            raise ValueError(f"{err} (q has shape {q.shape})") from None
        scores = round_scores(q16, k16, bias, qk_scale, r, params.view)
        kept = kept & (scores >= row_threshold(scores, kept, r.rule, fixed, unit_scale(qk_scale, r)))
        kept_rounds.append(kept)

    logits = _int_matmul(q16, k16) * qk_scale + bias
    logits = np.where(kept, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.exp(logits - row_max)
    denom = p.sum(axis=-1, keepdims=True)
    out = np.matmul(p, v16.astype(np.float64)) * sv_
    out = np.where(denom > 0, out / np.where(denom > 0, denom, 1.0), 0.0)
    return MPMRFResult(output=out.astype(np.float32), candidates=cand, kept=tuple(kept_rounds))


def workload_mask(workload: AttentionWorkload, bias=None) -> np.ndarray | None:
    """The additive float32 mask a call's reference computes with: ``bias`` (the call's mask/bias tensor,
    broadcastable to [B, H, Sq, Sk]) plus, for a causal workload, -inf where ``workload.causal_keep()``
    is False, as the accelerator applies it. None when there is neither."""
    mask = None if bias is None else np.asarray(bias, dtype=np.float32)
    if workload.causal:
        causal = np.where(workload.causal_keep(), 0.0, -np.inf).astype(np.float32)
        mask = causal if mask is None else mask + causal
    return mask


def reference_attention(workload: AttentionWorkload, q, k, v, bias=None) -> MPMRFResult:
    """MP-MRF of one offloaded call: Q/K/V and the call's ``bias`` (or None) with the workload's MP-MRF
    parameters, scale and causal mask (:func:`workload_mask`)."""
    return mpmrf_attention(q, k, v, workload_mask(workload, bias), workload.params, workload.effective_scale)


def float_attention(q, k, v, mask=None, scale: float | None = None) -> np.ndarray:
    """Plain softmax(q k^T * scale + mask) v in float64, returned as float32. Rows whose every entry
    is masked (-inf) output zeros, as the guarded exports of PyTorch do."""
    mask = _check_inputs(q, k, v, mask)
    d = q.shape[-1]
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    logits = _matmul_t(q, k) * scale
    logits = logits + mask
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.exp(logits - row_max)
    denom = p.sum(axis=-1, keepdims=True)
    out = np.matmul(p, v.astype(np.float64))
    out = np.where(denom > 0, out / np.where(denom > 0, denom, 1.0), 0.0)
    return out.astype(np.float32)
