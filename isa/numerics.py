"""Number formats of the Energon machine and the parameters of MP-MRF (DESIGN.md section 5).

This module is the contract between the compiler, the simulator and the numpy reference
(``energon_tvm.mpmrf``): what INT16 quantisation, the MSB low-precision views, the fixed-point threshold
coefficient alpha and the mask convention mean. The reference re-implements the arithmetic on its own
so that it stays an independent oracle; the simulator's driver uses the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INT16_MAX = 32767
#: Additive mask/bias entries at or below this are "masked out": never a candidate, never kept.
MASK_THRESHOLD = -1e4
#: alpha is held by the threshold unit in fixed point with this many fraction bits (1/1024 steps).
ALPHA_FRAC_BITS = 10
ALPHA_ONE = 1 << ALPHA_FRAC_BITS
#: widest product the Filtering Unit accumulates: q_bits + k_bits + log2(D) must stay below this.
FILTER_SCORE_BITS = 32
VIEW_RULES = ("msb", "round")


@dataclass(frozen=True)
class FilterRound:
    """One MP-MRF filter round: scores of Q at ``q_bits`` against K at ``k_bits``, then keep the
    candidates whose score reaches ``theta = mean + alpha * (max - mean)`` (alpha >= 0) or
    ``mean + alpha * (mean - min)`` (alpha < 0)."""

    q_bits: int
    k_bits: int
    alpha: float

    def __post_init__(self) -> None:
        for name in ("q_bits", "k_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
                raise ValueError(f"filter round {name} = {bits!r} must be an integer in 1..16")
        if not isinstance(self.alpha, (int, float, np.floating)) or not -1.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"filter round alpha = {self.alpha!r} must be a number in [-1, 1]")

    @property
    def alpha_fixed(self) -> int:
        """alpha as the threshold unit holds it: round(alpha * 2**ALPHA_FRAC_BITS)."""
        return alpha_to_fixed(self.alpha)


def alpha_to_fixed(alpha: float) -> int:
    return int(np.rint(float(alpha) * ALPHA_ONE))


@dataclass(frozen=True)
class MPMRFParams:
    """The rounds of MP-MRF. Bits may only grow from one round to the next (each round refines the
    previous one with more bits). ``alpha = -1`` in every round keeps every unmasked key: the dense
    INT16 baseline."""

    #: defaults from evidence (docs/accuracy.md): the sparsest setting of the all-MiniLM-L6-v2 / VADER
    #: sweep whose accuracy is within 0.5 points of float attention
    rounds: tuple[FilterRound, ...] = (FilterRound(4, 2, 0.0), FilterRound(4, 4, -0.25))
    #: low-precision view rule: "msb" (x16 >> (16 - b), what K's bit-planes give the machine) or
    #: "round" (round-to-nearest to b bits; a reference-only alternative, compared by measured accuracy)
    view: str = "msb"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rounds", tuple(self.rounds))
        if self.view not in VIEW_RULES:
            raise ValueError(f"view rule {self.view!r} is not one of {', '.join(VIEW_RULES)}")
        for i, r in enumerate(self.rounds):
            if not isinstance(r, FilterRound):
                raise ValueError(f"round {i + 1} is {r!r}, not a FilterRound")
        for i in range(1, len(self.rounds)):
            prev, cur = self.rounds[i - 1], self.rounds[i]
            if cur.q_bits < prev.q_bits or cur.k_bits < prev.k_bits:
                raise ValueError(
                    f"round {i + 1} uses Q{cur.q_bits} x K{cur.k_bits}, fewer bits than round {i} "
                    f"(Q{prev.q_bits} x K{prev.k_bits}); rounds must not lose precision")

    def with_view(self, view: str) -> MPMRFParams:
        return MPMRFParams(self.rounds, view)

    @classmethod
    def dense(cls, rounds: int = 0) -> MPMRFParams:
        """The dense INT16 baseline: no filter round (or ``rounds`` rounds that keep everything)."""
        return cls(tuple(FilterRound(4, 4, -1.0) for _ in range(rounds)))

    @classmethod
    def from_alphas(cls, alphas, bits=((4, 2), (4, 4))) -> MPMRFParams:
        alphas = list(alphas)
        if len(alphas) != len(bits):
            raise ValueError(f"{len(alphas)} alpha value(s) given for {len(bits)} filter rounds")
        return cls(tuple(FilterRound(qb, kb, float(a)) for (qb, kb), a in zip(bits, alphas)))

    def to_dict(self) -> dict:
        d = {"rounds": [[r.q_bits, r.k_bits, float(r.alpha)] for r in self.rounds]}
        if self.view != "msb":
            d["view"] = self.view
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MPMRFParams:
        try:
            return cls(tuple(FilterRound(int(qb), int(kb), float(a)) for qb, kb, a in d["rounds"]),
                       str(d.get("view", "msb")))
        except (KeyError, TypeError) as err:
            raise ValueError(f"malformed MP-MRF parameters {d!r}: {err}") from None


def quant_scale(x: np.ndarray) -> np.ndarray:
    """Symmetric INT16 scale per leading (batch, head) index of a [..., S, D] tensor (float64)."""
    amax = np.max(np.abs(x.astype(np.float64)), axis=(-2, -1))
    return np.where(amax > 0, amax / INT16_MAX, 1.0)


def quantize_int16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x16 = clip(rint(x / s))`` with ``s = max|x| / 32767`` per (batch, head); returns (x16, s)."""
    s = quant_scale(x)
    x16 = np.clip(np.rint(x.astype(np.float64) / s[..., None, None]), -INT16_MAX, INT16_MAX)
    return x16.astype(np.int16), s


def to_bitplanes(x16: np.ndarray) -> np.ndarray:
    """Bit planes of INT16 codes [..., S, D] -> uint8 [..., 16, S, D/8], plane 0 the sign (MSB).

    Plane p holds bit (15 - p) of every code, packed 8 dims per byte (big-endian bit order), so the
    top ``b`` planes are exactly the ``b``-bit MSB view ``x16 >> (16 - b)``.
    """
    u = x16.astype(np.int16).view(np.uint16)
    shifts = (15 - np.arange(16, dtype=np.uint16)).reshape((16,) + (1,) * u.ndim)
    bits = ((u[None] >> shifts) & 1).astype(np.uint8)  # [16, ..., S, D]
    bits = np.moveaxis(bits, 0, -3)  # [..., 16, S, D]
    return np.packbits(bits, axis=-1)


def from_bitplanes(planes: np.ndarray, bits: int) -> np.ndarray:
    """The ``bits``-bit MSB view from its top planes: uint8 [bits, S, D/8] -> int64 [S, D]."""
    unpacked = np.unpackbits(planes[:bits], axis=-1).astype(np.int64)  # [bits, S, D]
    weights = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    weights[0] = -weights[0]  # two's complement: the sign plane weighs -2**(bits-1)
    return np.tensordot(weights, unpacked, axes=(0, 0))
