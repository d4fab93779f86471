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
   the candidates whose score x satisfies ``x >= theta`` with mean m, max X and min mu of the row's
   candidate scores and ``theta = m + a * (X - m)`` for a >= 0, ``theta = m + a * (m - mu)`` for a < 0.
   The threshold unit holds alpha in fixed point, ``a = rint(alpha * 1024) / 1024``, and compares
   exactly in integers: ``1024 n x >= 1024 S + A (n X - S)`` (resp. ``A (S - n mu)``), where n is the
   candidate count, S their score sum and A = 1024 a. The row maximum always survives.
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

from .isa.numerics import ALPHA_ONE, MASK_THRESHOLD, FilterRound, MPMRFParams

if TYPE_CHECKING:
    from .schedules.workload import AttentionWorkload

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

__all__ = ["FilterRound", "MPMRFParams", "MPMRFResult", "float_attention", "mpmrf_attention", "reference_attention",
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


def _quantize(x):
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


def _filter_round(scores, cand, alpha_fixed):
    """Keep candidates with score >= theta, compared exactly in integers (see module docstring)."""
    n = cand.sum(axis=-1, keepdims=True).astype(np.int64)
    big = np.iinfo(np.int64).max
    total = np.where(cand, scores, 0).sum(axis=-1, keepdims=True)
    hi = np.where(cand, scores, -big).max(axis=-1, keepdims=True)
    lo = np.where(cand, scores, big).min(axis=-1, keepdims=True)
    spread = (n * hi - total) if alpha_fixed >= 0 else (total - n * lo)
    keep = ALPHA_ONE * n * scores >= ALPHA_ONE * total + alpha_fixed * spread
    return cand & keep


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

    q16, sq_ = _quantize(q)
    k16, sk_ = _quantize(k)
    v16, sv_ = _quantize(v)
    qk_scale = sq_ * sk_ * scale  # [B, H, 1, 1]

    bias = np.broadcast_to(mask.astype(np.float64), (b, h, sq, sk))
    cand = bias > MASK_THRESHOLD
    bias = np.where(cand, bias, 0.0)

    kept_rounds = []
    kept = cand
    for r in params.rounds:
        qv, kv = _view(q16, r.q_bits, params.view), _view(k16, r.k_bits, params.view)
        round_scale = qk_scale * float(2 ** (16 - r.q_bits)) * float(2 ** (16 - r.k_bits))
        bias_int = np.clip(np.rint(bias / round_scale), INT32_MIN, INT32_MAX).astype(np.int64)
        scores = np.clip(_int_matmul(qv, kv) + bias_int, INT32_MIN, INT32_MAX)
        kept = _filter_round(scores, kept, r.alpha_fixed)
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
