"""Number formats of the Energon machine and the parameters of its selection policies (DESIGN.md section 5).

This module is the contract between the compiler, the simulator and the numpy reference
(``energon_tvm.mpmrf``): what INT16 quantisation, the MSB low-precision views, the threshold rules
(MP-MRF's mean/max coefficient alpha, the gap below the row maximum, top-k, and Sanger's predicted
probability), their fixed-point forms, the per-head threshold values, the policies built from them
and the mask convention mean. The reference re-implements the arithmetic on its own
so that it stays an independent oracle; the simulator's driver uses the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
#: a round's threshold rule: ``mpmrf`` (the paper's: theta between the row's mean and its max or min,
#: by alpha), ``gap`` (keep the scores within ``gap`` logits of the row's maximum), ``topk`` (keep the
#: ``fraction`` of the row's candidates that score highest, SpAtten's top-k) or ``sanger`` (keep the keys
#: whose predicted softmax probability reaches ``probability``, Sanger's rule)
THRESHOLD_RULES = ("mpmrf", "gap", "topk", "sanger")
#: rules whose theta depends on the whole row's scores, not on running statistics: the select that
#: applies them must see every key of the row at once
RANKING_RULES = ("topk", "sanger")
#: the attribute of :class:`FilterRound` that holds each rule's threshold value
RULE_VALUE = {"mpmrf": "alpha", "gap": "gap", "topk": "fraction", "sanger": "probability"}
#: the gap (logits) is held in fixed point with this many fraction bits (1/64-logit steps), 12 bits wide
GAP_FRAC_BITS = 6
GAP_ONE = 1 << GAP_FRAC_BITS
GAP_FIXED_MAX = (1 << 12) - 1
GAP_MAX = GAP_FIXED_MAX / GAP_ONE
#: top-k's fraction and Sanger's probability are held with this many fraction bits (17-bit field: 1.0
#: is 65536)
KEEP_FRAC_BITS = 16
KEEP_ONE = 1 << KEEP_FRAC_BITS
#: Sanger's exponential: the logit distance below the row maximum in 1/16-logit steps, clipped to the
#: table; ``SANGER_EXP[x] = floor(65536 * exp(-x / 16))``, the threshold unit's 256-entry table
#: (``exp(-16) * 65536 < 1``: a key 16 logits below the best weighs 0 in the predicted softmax)
SANGER_STEPS = 16
SANGER_EXP = np.floor(KEEP_ONE * np.exp(-np.arange(256, dtype=np.float64) / SANGER_STEPS)).astype(np.int64)
SANGER_EXP.setflags(write=False)
#: the range of each rule's threshold value, and its fixed-point scale
RULE_RANGE = {"mpmrf": (-1.0, 1.0), "gap": (0.0, GAP_MAX), "topk": (1.0 / KEEP_ONE, 1.0), "sanger": (0.0, 1.0)}
RULE_ONE = {"mpmrf": ALPHA_ONE, "gap": GAP_ONE, "topk": KEEP_ONE, "sanger": KEEP_ONE}
#: what each rule's value is called, for messages and descriptions
RULE_UNIT = {"mpmrf": "", "gap": " logits", "topk": " of the row's candidates", "sanger": " (probability)"}
#: the uncalibrated default: rule and threshold value per round of the default rounds (Q4xK2, Q4xK4),
#: and each rule's own defaults, chosen by evidence across models and tasks (docs/accuracy.md)
DEFAULT_VALUES = {"mpmrf": (0.0, -0.25), "gap": (8.0, 4.0)}
DEFAULT_RULE = "gap"
DEFAULT_BITS = ((4, 2), (4, 4))


def to_fixed(rule: str, value: float) -> int:
    """A threshold value as the threshold unit holds it: ``rint(value * RULE_ONE[rule])``."""
    return int(np.rint(float(value) * RULE_ONE[rule]))


def from_fixed(rule: str, fixed: int) -> float:
    return int(fixed) / RULE_ONE[rule]


def _check_value(rule: str, value, what: str) -> float:
    lo, hi = RULE_RANGE[rule]
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not lo <= float(value) <= hi:
        raise ValueError(f"filter round {what} = {value!r} must be a number in [{lo:g}, {hi:g}]{RULE_UNIT[rule]}")
    return float(value)


@dataclass(frozen=True)
class FilterRound:
    """One filter round: scores of Q at ``q_bits`` against K at ``k_bits``, then per row a threshold theta
    over the row's candidate scores, keeping those that reach it. ``rule`` says how theta is set:

    * ``mpmrf`` (MP-MRF's rule): ``theta = mean + alpha * (max - mean)`` (alpha >= 0) or
      ``mean + alpha * (mean - min)`` (alpha < 0), alpha in [-1, 1];
    * ``gap``: ``theta = max - G``, G the gap of ``gap`` logits in the round's integer score units
      (``floor(gap_fixed / (GAP_ONE * unit))``, unit = the logits one score step stands for). A key whose
      estimated logit is more than ``gap`` below the row's best is dropped: the fraction kept adapts to
      how peaked the row is, where mean/max keeps a roughly constant fraction;
    * ``topk`` (SpAtten's top-k): theta is the k-th largest candidate score, ``k = max(1, ceil(f * n /
      KEEP_ONE))`` for n candidates and ``f = rint(fraction * KEEP_ONE)``; every key tied with the k-th is
      kept too, so a row keeps at least k;
    * ``sanger`` (Sanger's predicted probability): each candidate's weight in the softmax of the
      round's estimated logits is ``e = SANGER_EXP[min(floor(d * unit * SANGER_STEPS), 255)]``, d its
      score steps below the row's best; a key is kept when ``KEEP_ONE * e >= t * sum(e)``,
      ``t = rint(probability * KEEP_ONE)``, and the row's best is always kept.

    Every rule keeps the row maximum, so no row with a candidate is left empty. ``head_values``
    optionally gives the threshold value (alpha, gap, fraction or probability, by ``rule``) of every
    head of the attention, in head order; the rule's own attribute is then what a head without a value
    of its own would use (calibration sets it to the median head's)."""

    q_bits: int
    k_bits: int
    alpha: float = 0.0
    rule: str = "mpmrf"
    gap: float = 0.0
    head_values: tuple[float, ...] | None = None
    fraction: float = 1.0
    probability: float = 0.0

    def __post_init__(self) -> None:
        for name in ("q_bits", "k_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
                raise ValueError(f"filter round {name} = {bits!r} must be an integer in 1..16")
        if self.rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule {self.rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
        for rule, attr in RULE_VALUE.items():
            _check_value(rule, getattr(self, attr), attr)
        if self.rule == "topk" and to_fixed("topk", self.fraction) < 1:
            raise ValueError(f"filter round fraction = {self.fraction!r} rounds to 0 in 1/{KEEP_ONE} steps; "
                             f"it must be at least 1/{KEEP_ONE}")
        if self.head_values is not None:
            name = RULE_VALUE[self.rule]
            values = tuple(_check_value(self.rule, v, f"head {h} {name}") for h, v in enumerate(self.head_values))
            if not values:
                raise ValueError("filter round head_values is empty: give one value per head, or None")
            object.__setattr__(self, "head_values", values)

    @property
    def value(self) -> float:
        """The round's threshold value under its rule (alpha, gap, fraction or probability)."""
        return float(getattr(self, RULE_VALUE[self.rule]))

    @property
    def ranking(self) -> bool:
        """Whether theta depends on the whole row's scores (top-k, Sanger), not on running statistics."""
        return self.rule in RANKING_RULES

    def values(self, heads: int) -> tuple[float, ...]:
        """The threshold value of each of ``heads`` heads."""
        if self.head_values is None:
            return (self.value,) * heads
        if len(self.head_values) != heads:
            raise ValueError(f"filter round Q{self.q_bits}xK{self.k_bits} has {len(self.head_values)} "
                             f"per-head threshold values for an attention of {heads} heads")
        return self.head_values

    def fixed(self, head: int | None = None) -> int:
        """Head ``head``'s threshold value (the round's own for None) as the threshold unit holds it."""
        value = self.value if head is None or self.head_values is None else self.head_values[head]
        return to_fixed(self.rule, value)

    @property
    def alpha_fixed(self) -> int:
        """alpha as the threshold unit holds it: round(alpha * 2**ALPHA_FRAC_BITS)."""
        return alpha_to_fixed(self.alpha)

    def with_value(self, value: float) -> FilterRound:
        """This round with ``value`` as its rule's threshold value (no per-head values)."""
        return replace(self, head_values=None, **{RULE_VALUE[self.rule]: float(value)})

    def with_head_values(self, values) -> FilterRound:
        values = tuple(float(v) for v in values)
        median = sorted(values)[(len(values) - 1) // 2]  # the lower median: a value some head has
        return replace(self, head_values=values, **{RULE_VALUE[self.rule]: median})

    def describe(self) -> str:
        """``Q4xK2 alpha=0`` / ``Q4xK4 gap=3.5`` / ``Q4xK4 fraction=0.25`` / ``Q4xK4 gap=1.5..6 per head``."""
        name = RULE_VALUE[self.rule]
        if self.head_values is None:
            return f"Q{self.q_bits}xK{self.k_bits} {name}={self.value:g}"
        return (f"Q{self.q_bits}xK{self.k_bits} {name}={min(self.head_values):g}..{max(self.head_values):g} "
                f"per head")

    def to_json(self):
        """``[qb, kb, alpha]`` for MP-MRF's rule with one value (the original form), else a dict."""
        if self.rule == "mpmrf" and self.head_values is None:
            return [self.q_bits, self.k_bits, float(self.alpha)]
        d = {"bits": [self.q_bits, self.k_bits], "rule": self.rule, "value": self.value}
        if self.head_values is not None:
            d["heads"] = list(self.head_values)
        return d

    @classmethod
    def from_json(cls, d) -> FilterRound:
        if isinstance(d, (list, tuple)):
            qb, kb, a = d
            return cls(int(qb), int(kb), float(a))
        if not isinstance(d, dict) or set(d) - {"bits", "rule", "value", "heads"}:
            raise ValueError(f"a filter round is [q_bits, k_bits, alpha] or a dict of bits, rule, value and "
                             f"heads; got {d!r}")
        (qb, kb), rule, value = d["bits"], str(d["rule"]), d["value"]
        heads = d.get("heads")
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule {rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
        return cls(int(qb), int(kb), rule=rule, **{RULE_VALUE[rule]: value},
                   head_values=None if heads is None else tuple(heads))


def alpha_to_fixed(alpha: float) -> int:
    return int(np.rint(float(alpha) * ALPHA_ONE))


@dataclass(frozen=True)
class MPMRFParams:
    """The rounds of MP-MRF. Bits may only grow from one round to the next (each round refines the
    previous one with more bits). ``alpha = -1`` in every round keeps every unmasked key: the dense
    INT16 baseline."""

    #: the uncalibrated default from evidence (docs/accuracy.md): the gap rule at 8 then 4 logits, within
    #: 0.5 accuracy points / 0.01 Spearman of float attention on every model and task measured; MP-MRF's
    #: mean/max rule at its former default (alpha 0, -0.25) is not (-0.018 and -0.030 Spearman on tweets)
    rounds: tuple[FilterRound, ...] = tuple(
        FilterRound(qb, kb, rule=DEFAULT_RULE, **{RULE_VALUE[DEFAULT_RULE]: v})
        for (qb, kb), v in zip(DEFAULT_BITS, DEFAULT_VALUES[DEFAULT_RULE]))
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
    def from_alphas(cls, alphas, bits=DEFAULT_BITS) -> MPMRFParams:
        alphas = list(alphas)
        if len(alphas) != len(bits):
            raise ValueError(f"{len(alphas)} alpha value(s) given for {len(bits)} filter rounds")
        return cls(tuple(FilterRound(qb, kb, float(a)) for (qb, kb), a in zip(bits, alphas)))

    @classmethod
    def from_values(cls, rule: str, values, bits=DEFAULT_BITS) -> MPMRFParams:
        """Rounds of ``bits`` under ``rule`` with one threshold value each (alpha or gap)."""
        values = list(values)
        if len(values) != len(bits):
            raise ValueError(f"{len(values)} threshold value(s) given for {len(bits)} filter rounds")
        if rule not in THRESHOLD_RULES:
            raise ValueError(f"threshold rule {rule!r} is not one of {', '.join(THRESHOLD_RULES)}")
        return cls(tuple(FilterRound(qb, kb, rule=rule, **{RULE_VALUE[rule]: float(v)})
                         for (qb, kb), v in zip(bits, values)))

    @classmethod
    def for_policy(cls, policy: str, value: float | None = None) -> MPMRFParams:
        """The rounds of ``policy`` (:data:`POLICIES`) at its default value, or at ``value`` (top-k's
        fraction, Sanger's probability: the policies of one round; ``mpmrf`` takes its values per round
        through :meth:`from_values`)."""
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is not one of {', '.join(POLICIES)}")
        rounds = POLICY_ROUNDS[policy]
        if value is not None:
            if len(rounds) != 1:
                raise ValueError(f"policy {policy!r} has {len(rounds)} rounds; give its values per round")
            rounds = (rounds[0].with_value(value),)
        return cls(rounds)

    @property
    def policy(self) -> str:
        """The selection policy these rounds implement: ``dense`` without a round, else the policy whose
        rules every round uses (``mpmrf`` for MP-MRF's and the gap rule); rounds mixing policies are named
        by theirs in round order, e.g. ``mpmrf+topk``."""
        names = []
        for r in self.rounds:
            name = next(p for p, rules in POLICY_RULES.items() if r.rule in rules)
            if name not in names:
                names.append(name)
        return "+".join(names) or "dense"

    def describe(self) -> str:
        """``Q4xK2 alpha=0, Q4xK4 alpha=-0.25``; ``dense`` without a filter round."""
        return ", ".join(r.describe() for r in self.rounds) or "dense"

    def to_dict(self) -> dict:
        d = {"rounds": [r.to_json() for r in self.rounds]}
        if self.view != "msb":
            d["view"] = self.view
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MPMRFParams:
        try:
            return cls(tuple(FilterRound.from_json(r) for r in d["rounds"]), str(d.get("view", "msb")))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed MP-MRF parameters {d!r}: {err}") from None


#: the selection policies a program can run, side by side on one machine (docs/policies.md): the rules
#: their rounds use and their default rounds. ``mpmrf`` is the paper's multi-round filtering (its
#: mean/max rule or the gap rule: the uncalibrated default above); ``topk`` and ``sanger`` are one Q4xK4
#: round of their rule (SpAtten's top-k; Sanger's 4-bit prediction); ``dense`` has no round
POLICIES = ("mpmrf", "topk", "sanger", "dense")
POLICY_RULES = {"mpmrf": ("mpmrf", "gap"), "topk": ("topk",), "sanger": ("sanger",), "dense": ()}
POLICY_ROUNDS = {
    "mpmrf": MPMRFParams().rounds,
    "topk": (FilterRound(4, 4, rule="topk", fraction=0.25),),
    "sanger": (FilterRound(4, 4, rule="sanger", probability=0.01),),
    "dense": (),
}


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
