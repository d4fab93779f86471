"""An attention workload: what one offloaded attention call computes, independent of how it is tiled.

The TVM backend extracts one per offloaded call site; the scheduler maps it onto a machine; tuning
records are keyed by :meth:`AttentionWorkload.key`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from ..isa.errors import ScheduleError
from ..isa.numerics import MPMRFParams

DTYPES = ("float32", "float16")


#: the letter that names each threshold rule in a workload key, before its fixed-point value
RULE_LETTERS = {"mpmrf": "a", "gap": "g", "topk": "t", "sanger": "p"}


def _round_key(r) -> str:
    """A round in a workload key: ``q4k2a0`` (MP-MRF's rule, alpha fixed point), ``q4k4g192`` (gap, 1/64
    logits), ``q4k4t16384`` (top-k's fraction) and ``q4k4p655`` (Sanger's probability), both in 1/65536,
    with ``h`` and a digest of the per-head values when the heads have their own."""
    key = f"q{r.q_bits}k{r.k_bits}{RULE_LETTERS[r.rule]}{r.fixed()}"
    if r.head_values is not None:
        digest = hashlib.sha256(",".join(str(r.fixed(h)) for h in range(len(r.head_values))).encode())
        key += f"h{digest.hexdigest()[:8]}"
    return key


@dataclass(frozen=True)
class AttentionWorkload:
    """softmax(Q K^T * scale + bias) V for Q [B, H, Sq, D], K/V [B, H, Sk, D], with MP-MRF filtering.

    ``bias_shape`` is the shape of the additive mask/bias tensor as the model provides it, right-aligned
    broadcastable to [B, H, Sq, Sk] (None: no mask tensor). A bias whose query dimension is 1
    (e.g. [B, 1, 1, Sk]) is a padding mask: one key set per batch, shared by every query row.
    ``causal`` masks key k for query q when k > q + (Sk - Sq) (the bottom-right aligned convention of
    decoder models with a KV cache; top-left for Sq == Sk). ``scale`` None means 1/sqrt(D).
    """

    batch: int
    heads: int
    seq_q: int
    seq_k: int
    head_dim: int
    causal: bool = False
    bias_shape: tuple[int, ...] | None = None
    scale: float | None = None
    dtype: str = "float32"
    params: MPMRFParams = field(default_factory=MPMRFParams)

    def __post_init__(self) -> None:
        for name in ("batch", "heads", "seq_q", "seq_k", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScheduleError(f"workload {name} = {value!r} must be a positive integer")
        if self.dtype not in DTYPES:
            raise ScheduleError(f"workload dtype {self.dtype!r} is not supported; supported: "
                                f"{', '.join(DTYPES)}")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise ScheduleError(f"workload scale = {self.scale!r} must be a positive finite number")
        for r in self.params.rounds:
            try:
                r.values(self.heads)
            except ValueError as err:
                raise ScheduleError(str(err)) from None
        if self.bias_shape is not None:
            shape = tuple(int(s) for s in self.bias_shape)
            object.__setattr__(self, "bias_shape", shape)
            full = (self.batch, self.heads, self.seq_q, self.seq_k)
            if len(shape) > 4 or any(s not in (1, f) for s, f in zip(shape[::-1], full[::-1])):
                raise ScheduleError(f"bias shape {list(shape)} does not broadcast to [B, H, Sq, Sk] = "
                                    f"{list(full)}")

    @property
    def bias_shape4(self) -> tuple[int, int, int, int] | None:
        """The bias shape left-padded to 4 dims."""
        if self.bias_shape is None:
            return None
        return (1,) * (4 - len(self.bias_shape)) + self.bias_shape

    @property
    def mask_kind(self) -> str:
        """``none``, ``padding`` (bias broadcast over query rows), ``bias`` (general), ``causal``, or
        ``causal+padding`` / ``causal+bias``."""
        bias = self.bias_shape4
        kind = "none" if bias is None else ("padding" if bias[2] == 1 else "bias")
        if self.causal:
            return "causal" if kind == "none" else f"causal+{kind}"
        return kind

    @property
    def effective_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim) if self.scale is None else float(self.scale)

    @property
    def causal_shift(self) -> int:
        """Key k is a causal candidate of query q when k <= q + causal_shift."""
        return self.seq_k - self.seq_q

    def causal_keep(self) -> np.ndarray:
        """bool [Sq, Sk]: True where key k is a causal candidate of query q (whether or not ``causal``)."""
        return np.arange(self.seq_k)[None, :] <= np.arange(self.seq_q)[:, None] + self.causal_shift

    def key(self) -> str:
        """Stable identity for tuning records."""
        bias = "x".join(map(str, self.bias_shape4)) if self.bias_shape is not None else "-"
        rounds = ",".join(_round_key(r) for r in self.params.rounds)
        if self.params.view != "msb":
            rounds += f",{self.params.view}"
        return (f"attn_b{self.batch}_h{self.heads}_q{self.seq_q}_k{self.seq_k}_d{self.head_dim}"
                f"_c{int(self.causal)}_bias{bias}_s{self.effective_scale:.6g}_{self.dtype}_r[{rounds}]")

    def to_dict(self) -> dict:
        return {
            "batch": self.batch, "heads": self.heads, "seq_q": self.seq_q, "seq_k": self.seq_k,
            "head_dim": self.head_dim, "causal": self.causal,
            "bias_shape": None if self.bias_shape is None else list(self.bias_shape),
            "scale": self.scale, "dtype": self.dtype, "params": self.params.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> AttentionWorkload:
        try:
            return cls(
                batch=int(d["batch"]), heads=int(d["heads"]), seq_q=int(d["seq_q"]),
                seq_k=int(d["seq_k"]), head_dim=int(d["head_dim"]), causal=bool(d["causal"]),
                bias_shape=None if d.get("bias_shape") is None else tuple(d["bias_shape"]),
                scale=None if d.get("scale") is None else float(d["scale"]),
                dtype=str(d.get("dtype", "float32")), params=MPMRFParams.from_dict(d["params"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ScheduleError(f"malformed workload record: {err}") from None
