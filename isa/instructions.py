"""The Energon instruction set, declared once.

Each instruction is one :class:`OpSpec`: mnemonic, opcode, executing unit, fields (name, width, legal
range, meaning) and the buffers it reads and writes. The binary encoding, the assembler, the
disassembler, ``docs/isa.md`` and the simulator's dispatch are all derived from :data:`OPS`.

The machine (DESIGN.md section 6) has four decoupled units fed in program order from one instruction
stream: LOAD (DMA from DRAM into the on-chip buffers, including the gather of only the kept K/V rows
and of only the missing K bit-planes), FILTER (the Filtering Unit: low-bit scores, per-row threshold,
selector), ATTEND (the Attention Unit: INT16 Q.K, scale and bias, online softmax, P.V, normalisation)
and STORE (DMA back to DRAM). Units wait on each other only through dependency tokens: 16 counting
semaphores, each signalled by exactly one unit and waited on by exactly one other.

Instruction words are 256 bits, little-endian: opcode in bits [0, 6), then the fields in declaration
order, each as wide as its declaration says for the program's hardware config (buffer address fields
are as wide as the buffer needs); unused high bits are zero. Opcode 0 is never assigned, so an all-zero
word traps as an illegal instruction.

Conventions the fields rely on (registers are set by ``SETR`` in the program header):

* A query tile has ``rows`` rows; an instruction's row ``r`` is the tile's ``r``-th query.
* The index buffer holds kept bitmasks row-major with a row stride of ``ceil(SEQ_K / 8)`` bytes; an
  ``idx`` operand is the byte address of the key chunk's first key in the tile's row 0, so key chunks
  start at multiples of 8.
* The K plane buffer holds a key chunk's bit-planes plane-major: plane ``p`` of a ``keys``-key chunk
  at ``kp + p * keys * D / 8``. In DRAM plane ``p`` of a head lies ``p * SEQ_K * D / 8`` bytes after
  plane 0.
* Scores are INT32 (INT16 with ``narrow``) row-major [rows, keys]; bias tiles FP32 [rows, keys]; K/V tiles INT16
  [keys, D] with V ``keys * D * 2`` bytes after K (a gathered row sits at its slot in the chunk).
* A head's K/V held across its query tiles is its chunks' K and V tiles one after another; LD.KVR keeps
  one resident bit per key of the chunk (an index-buffer row of ``ceil(keys / 8)`` bytes at ``res``),
  so a key kept by later tiles is not fetched again.
* A head's slot in the param buffer holds two FP64 values: ``qk_scale = sq * sk * scale`` and ``sv``.
* Thresholds are immediates of F.SELECT / F.RESELECT, which name their head: a program whose heads have
  thresholds of their own (calibrated per layer, head and round) gives each head's selects that head's
  value; nothing in the param buffer changes. The ``rule`` field says which immediate holds it and how
  theta is set (``isa.numerics``): ``mpmrf`` from the latched mean, max and min by ``alpha``; ``gap``
  at the latched max less ``gap`` logits, turned into score steps with the round's unit
  ``qk_scale * 2**(16-qb) * 2**(16-kb)``, latched by the round's first F.SCORE with the
  row statistics; ``topk`` (SpAtten's top-k) at the k-th largest candidate score of the row,
  ``k = max(1, ceil(keep * n / 65536))`` for the latched candidate count n; ``sanger`` (Sanger's
  predicted probability) at the lowest score whose weight ``SANGER_EXP[min(floor(d * unit * 16),
  255)]``, d its steps below the latched max, reaches ``keep / 65536`` of the row's summed weights (the
  row's max is always kept). ``topk`` and ``sanger`` rank the whole row: their select must cover every
  key of it (``k0 = 0``, ``keys = SEQ_K``) in one instruction, or it traps.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .config import HardwareConfig
from .errors import EncodingError
from .numerics import KEEP_ONE, THRESHOLD_RULES

#: 2: F.SELECT / F.RESELECT's `rule` field is 2 bits and a `keep` field follows `gap` (top-k, Sanger);
#: 3: the KV_STRIDE register (K and V rows interleaved per key in DRAM); binaries of an earlier version
#: are refused (recompile the model)
ISA_VERSION = 3
WORD_BITS = 256
WORD_BYTES = WORD_BITS // 8
OPCODE_BITS = 6
NUM_TOKENS = 16


class Unit(enum.IntEnum):
    LOAD = 0
    FILTER = 1
    ATTEND = 2
    STORE = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class Reg(enum.IntEnum):
    """Per-program configuration registers (``SETR``)."""

    HEAD_DIM = 0      # D, elements per Q/K/V row
    SEQ_Q = 1         # query rows per head
    SEQ_K = 2         # keys per head: sets the index row stride and the DRAM K plane stride
    V_OFFSET = 3      # bytes from a K row in DRAM to the V row of the same key
    CAUSAL_SHIFT = 4  # causal candidate rule: key k <= query q + CAUSAL_SHIFT (two's complement)
    KV_STRIDE = 5     # bytes from a key's K row in DRAM to the next key's (0: D * 2, the rows packed)


Width = int | Callable[[HardwareConfig], int]


@dataclass(frozen=True)
class Field:
    """One operand. ``width``, ``lo`` and ``hi`` may depend on the hardware config; ``None`` bounds
    mean the smallest / largest value the width holds (0 for unsigned fields). ``buffer`` names the
    buffer an address field points into."""

    name: str
    width: Width
    doc: str
    lo: int | Callable[[HardwareConfig], int] | None = None
    hi: int | Callable[[HardwareConfig], int] | None = None
    signed: bool = False
    buffer: str | None = None
    enum: type[enum.IntEnum] | None = None
    default: int | None = None

    def bits(self, cfg: HardwareConfig) -> int:
        return self.width(cfg) if callable(self.width) else self.width

    def bounds(self, cfg: HardwareConfig) -> tuple[int, int]:
        """Legal (lo, hi) values, inclusive, for ``cfg``."""
        n = self.bits(cfg)
        lo = -(1 << (n - 1)) if self.signed else 0
        hi = (1 << (n - 1)) - 1 if self.signed else (1 << n) - 1
        if self.lo is not None:
            lo = max(lo, self.lo(cfg) if callable(self.lo) else self.lo)
        if self.hi is not None:
            hi = min(hi, self.hi(cfg) if callable(self.hi) else self.hi)
        if self.enum is not None:
            hi = min(hi, max(self.enum))
        return lo, hi


@dataclass(frozen=True)
class OpSpec:
    """The one declaration of an instruction."""

    mnemonic: str
    opcode: int
    unit: Unit | None  # None: the instruction's ``unit`` field says (WAIT, SIGNAL) or it is control
    fields: tuple[Field, ...]
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    doc: str

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.mnemonic} has no field {name!r}")

    @cached_property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def layout(self, cfg: HardwareConfig) -> list[tuple[Field, int, int]]:
        """(field, first bit, width) of every field for ``cfg``."""
        out, pos = [], OPCODE_BITS
        for f in self.fields:
            n = f.bits(cfg)
            out.append((f, pos, n))
            pos += n
        return out


# -- field constructors ---------------------------------------------------------------------------

def _addr(buffer: str, name: str | None = None, doc: str | None = None) -> Field:
    return Field(name or buffer, lambda c, b=buffer: c.addr_bits(b),
                 doc or f"byte address in the {buffer} buffer", hi=lambda c, b=buffer: c.buffer(b) - 1,
                 buffer=buffer)


def _rows(doc: str = "query rows of the tile (1 .. max_query_tile)") -> Field:
    return Field("rows", lambda c: c.row_bits, doc, lo=1, hi=lambda c: c.max_query_tile)


def _keys(doc: str = "keys in the chunk") -> Field:
    return Field("keys", 16, doc, lo=1)


def _head() -> Field:
    return Field("head", lambda c: c.head_slot_bits, "the head's slot in the param buffer",
                 hi=lambda c: c.max_heads - 1)


class BiasMode(enum.IntEnum):
    """How an instruction reads the FP32 bias tile at its ``bias`` address."""

    NONE = 0  # no bias
    TILE = 1  # [rows, keys]: one bias row per query row
    ROW = 2   # [1, keys]: one row shared by every query row (padding masks)


class ThresholdRule(enum.IntEnum):
    """How the threshold unit sets a row's theta (``isa.numerics``): from the latched statistics
    (``mpmrf``, ``gap``), or by ranking the select's whole row of scores (``topk``, ``sanger``)."""

    MPMRF = 0   # theta = mean + alpha * (max - mean), or mean + alpha * (mean - min) for alpha < 0
    GAP = 1     # theta = max - floor(gap / unit): the keys within `gap` logits of the row's best
    TOPK = 2    # theta = the k-th largest candidate score, k = max(1, ceil(keep * n / 65536)); ties kept
    SANGER = 3  # keep a key whose predicted probability (256-entry exp table) reaches keep / 65536; max kept

    @classmethod
    def of(cls, rule: str) -> ThresholdRule:
        """The rule named ``rule`` in ``isa.numerics.THRESHOLD_RULES``."""
        return cls[rule.upper()]

    @property
    def value_field(self) -> str:
        """The F.SELECT / F.RESELECT field that holds this rule's threshold value."""
        return RULE_FIELD[self]

    @property
    def ranking(self) -> bool:
        """Whether theta depends on the whole row of scores, so the select must see every key at once."""
        return self in (ThresholdRule.TOPK, ThresholdRule.SANGER)

    @property
    def compares(self) -> int:
        """Threshold-unit compares per (row, key) of a select under this rule (billed as ``Work.compares``):
        1 for the statistics rules (the compare with theta); 2 for top-k (its ranking pass, then the
        select); 3 for Sanger (the exp-table lookup, the accumulation of the row's weights, the compare)."""
        return SELECT_COMPARES[self]


#: the field of F.SELECT / F.RESELECT holding each rule's threshold value (fixed point, isa.numerics)
RULE_FIELD = {ThresholdRule.MPMRF: "alpha", ThresholdRule.GAP: "gap", ThresholdRule.TOPK: "keep",
              ThresholdRule.SANGER: "keep"}
#: our assumption of the threshold unit's compares per (row, key) of a select, by rule (docs/energy.md)
SELECT_COMPARES = {ThresholdRule.MPMRF: 1, ThresholdRule.GAP: 1, ThresholdRule.TOPK: 2, ThresholdRule.SANGER: 3}
assert tuple(m.name.lower() for m in ThresholdRule) == THRESHOLD_RULES


_DRAM = Field("dram", 32, "DRAM byte address")
_FLAG_BIAS = Field("biasmode", 2, "none | tile ([rows, keys] at `bias`) | row ([1, keys], shared by all rows)",
                   enum=BiasMode, default=0)
_TOKEN = Field("token", 4, "dependency token (counting semaphore) 0..15")
_RULE = Field("rule", 2, "threshold rule: mpmrf (theta from `alpha`) | gap (theta = row max - `gap`) | topk "
               "(keep the `keep` fraction of the row's candidates) | sanger (keep the keys whose predicted "
               "probability reaches `keep`)", enum=ThresholdRule, default=0)
_GAP = Field("gap", 12, "gap rule: logits below the row maximum, fixed point (64 = 1.0 logit)", default=0)
_KEEP = Field("keep", 17, f"topk: the fraction of the row's candidates kept; sanger: the probability threshold; "
              f"fixed point ({KEEP_ONE} = 1.0)", hi=KEEP_ONE, default=0)
_NARROW = Field("narrow", 1, "1: scores stored as INT16, for a round whose range fits (no bias, and "
                "D * 2**(qb-1) * 2**(kb-1) <= 32767); 0: INT32", default=0)


OPS: tuple[OpSpec, ...] = (
    OpSpec("SETR", 1, None,
           (Field("reg", 4, "configuration register", enum=Reg), Field("value", 32, "value (two's "
                                                                       "complement for CAUSAL_SHIFT)")),
           (), (),
           "Set a configuration register. Only in the program header, before the first unit "
           "instruction; registers are read-only afterwards."),
    OpSpec("WAIT", 2, None, (Field("unit", 2, "unit that waits", enum=Unit), _TOKEN), (), (),
           "The unit blocks until the token's count is positive, then decrements it."),
    OpSpec("SIGNAL", 3, None, (Field("unit", 2, "unit that signals", enum=Unit), _TOKEN), (), (),
           "When every earlier instruction of the unit has completed, increment the token's count."),
    OpSpec("HALT", 4, None, (), (), (),
           "End of program: the last word. The machine stops when every unit has drained its queue."),
    # LOAD -----------------------------------------------------------------------------------------
    OpSpec("LD.PARAM", 8, Unit.LOAD,
           (_DRAM, Field("heads", lambda c: c.head_slot_bits + 1, "heads to load", lo=1,
                         hi=lambda c: c.max_heads), _addr("param", "buf")),
           ("dram",), ("param",),
           "Load `heads` 16-byte head descriptors (FP64 qk_scale, FP64 sv) from `dram` to `buf`."),
    OpSpec("LD.Q", 9, Unit.LOAD, (_DRAM, _rows(), _addr("q", "buf")), ("dram",), ("q",),
           "Load `rows` contiguous INT16 Q rows (rows * D * 2 bytes) from `dram` to `buf`."),
    OpSpec("LD.KP", 10, Unit.LOAD,
           (_DRAM, _keys(), Field("plane_lo", 4, "first plane to load (0 = sign/MSB)"),
            Field("plane_hi", 5, "one past the last plane to load", lo=1, hi=16),
            _addr("kplane", "buf")),
           ("dram",), ("kplane",),
           "Load K bit-planes [plane_lo, plane_hi) of a `keys`-key chunk whose plane 0 starts at "
           "`dram`; plane p lands at buf + p * keys * D / 8, so a later round loads only the planes it "
           "is missing. One contiguous segment per plane."),
    OpSpec("LD.BIAS", 11, Unit.LOAD,
           (_DRAM, _rows(), _keys(), _addr("bias", "buf")),
           ("dram",), ("bias",),
           "Load an FP32 bias tile [rows, keys] (DRAM row stride SEQ_K * 4 bytes) to `buf`, row-major. "
           "A padding mask is a single row (rows = 1) that consumers read in `row` bias mode."),
    OpSpec("LD.KV", 12, Unit.LOAD,
           (_DRAM, _keys(), _rows("query rows whose kept bits select the keys"),
            _addr("index", "idx", "kept bitmask of the tile's row 0 at the chunk's first key"),
            _addr("kv", "buf")),
           ("dram", "index"), ("kv",),
           "Gather, for every key of the chunk kept by at least one of the tile's rows, its INT16 K row "
           "(at dram + j * KV_STRIDE) and V row (V_OFFSET further) into slot j of the K and V tiles. "
           "Rows adjacent in DRAM are one segment: with K and V interleaved per key (V_OFFSET = D * 2, "
           "KV_STRIDE = D * 4) a run of adjacent keys is one segment, with K and V in two regions two; "
           "scattered keys cost a request each."),
    OpSpec("LD.KVR", 13, Unit.LOAD,
           (_DRAM, _keys(), _rows("query rows whose kept bits select the keys"),
            _addr("index", "idx", "kept bitmask of the tile's row 0 at the chunk's first key"),
            _addr("index", "res", "the chunk's resident bitmask: one bit per key, set once its K/V rows are "
                  "in the kv buffer"),
            _addr("kv", "buf"),
            Field("first", 1, "1: the chunk's K/V region holds no key of this head yet (clear the "
                  "resident bits first)", default=0)),
           ("dram", "index"), ("kv", "index"),
           "Gather into a head's resident K/V: for every key of the chunk kept by at least one of the "
           "tile's rows and not yet marked in the resident bitmask at `res`, its INT16 K row and V row "
           "into slot j of the chunk's K and V tiles at `buf` (as LD.KV), then mark every key the tile "
           "keeps as resident. A key kept by several query tiles of a head is fetched from DRAM once."),
    # FILTER ---------------------------------------------------------------------------------------
    OpSpec("F.CAND", 16, Unit.FILTER,
           (_rows(), Field("q0", 16, "absolute index of the tile's first query"),
            Field("k0", 16, "absolute index of the chunk's first key (multiple of 8)"), _keys(),
            _addr("index", "idx"), _addr("bias"), _head(),
            Field("causal", 1, "1: keep only keys k <= q + CAUSAL_SHIFT", default=0), _FLAG_BIAS),
           ("bias",), ("index",),
           "Write the initial candidate bits of a tile x chunk of head `head`: every key, less the "
           "causally masked ones and those whose bias entry is <= -1e4."),
    OpSpec("F.SCORE", 17, Unit.FILTER,
           (Field("qb", 5, "Q bits of this round's low-precision view", lo=1, hi=16),
            Field("kb", 5, "K bits (planes) of this round's view", lo=1, hi=16), _rows(),
            _addr("q"), _addr("kplane", "kp"), _keys(), _addr("score", "sc"), _addr("index", "idx"),
            _addr("bias"), _head(),
            Field("first", 1, "1: first chunk of the round: reset the per-row statistics", default=0),
            _FLAG_BIAS,
            Field("store", 1, "1: write the scores to `sc` for F.SELECT; 0: statistics only (a later "
                  "F.RESELECT recomputes them)", default=1),
            _NARROW),
           ("q", "kplane", "index", "bias", "param"), ("score",),
           "Low-bit scores (q16 >> (16 - qb)) . (K view from the top kb planes) for the candidate "
           "pairs of a tile x chunk, plus the bias quantised into the round's integer domain, "
           "saturated to INT32; accumulate each row's candidate count, sum, max and min into the "
           "threshold unit, and with `store` keep the scores in the score buffer."),
    OpSpec("F.SELECT", 18, Unit.FILTER,
           (Field("round", 3, "filter round number, for statistics", lo=1),
            Field("alpha", 12, "threshold coefficient, fixed point (1024 = 1.0)", lo=-1024, hi=1024,
                  signed=True),
            _rows(), Field("q0", 16, "absolute index of the tile's first query (for statistics)"),
            Field("k0", 16, "absolute index of the chunk's first key (for statistics)"), _keys(),
            _addr("score", "sc"), _addr("index", "idx"), _head(), _NARROW, _RULE, _GAP, _KEEP),
           ("score", "index"), ("index",),
           "Per-row threshold theta under `rule` with the head's threshold value (`alpha`, `gap` or `keep`); "
           "clear the kept bit of every candidate scoring below it. MP-MRF's rule and the gap rule set theta "
           "from the latched statistics (one compare per row and key). Top-k (topk) ranks the row's "
           "candidate scores and sets theta at the k-th largest, k = max(1, ceil(keep * n / 65536)) for the "
           "latched count n, keeping its ties (two compares per row and key: the ranking pass, then the "
           "select). Sanger's rule (sanger) looks up each candidate's weight SANGER_EXP[min(floor(d * unit * "
           "16), 255)], d its score steps below the latched max, accumulates the row's weights and keeps the "
           "keys whose weight reaches keep / 65536 of their sum, and the max (three: lookup, accumulate, "
           "compare). Both rank the whole row: their select must cover every key of it (k0 = 0, keys = "
           "SEQ_K), or it traps. The `head`, `q0` and `k0` fields place the tile for statistics and for "
           "timing-only runs driven by a sparsity profile."),
    OpSpec("F.RESELECT", 19, Unit.FILTER,
           (Field("qb", 5, "Q bits of this round's low-precision view", lo=1, hi=16),
            Field("kb", 5, "K bits (planes) of this round's view", lo=1, hi=16),
            Field("round", 3, "filter round number, for statistics", lo=1),
            Field("alpha", 12, "threshold coefficient, fixed point (1024 = 1.0)", lo=-1024, hi=1024,
                  signed=True),
            _rows(), Field("q0", 16, "absolute index of the tile's first query (for statistics)"),
            Field("k0", 16, "absolute index of the chunk's first key (for statistics)"), _keys(),
            _addr("q"), _addr("kplane", "kp"), _addr("index", "idx"), _addr("bias"), _head(), _FLAG_BIAS,
            _RULE, _GAP, _KEEP),
           ("q", "kplane", "index", "bias", "param"), ("index",),
           "Recompute this round's scores for a tile x chunk (as F.SCORE) and select among them (as "
           "F.SELECT), without the score buffer: twice the low-bit MACs, but query tiles are no longer "
           "bounded by the score buffer's size. Every rule of F.SELECT applies, at its compares per row and "
           "key; a topk or sanger select must cover the whole row (k0 = 0, keys = SEQ_K), or it traps."),
    # ATTEND ---------------------------------------------------------------------------------------
    OpSpec("A.INIT", 24, Unit.ATTEND, (_rows(),), (), (),
           "Reset the online-softmax state (running max, sum, accumulator) of the tile's rows."),
    OpSpec("A.ATTN", 25, Unit.ATTEND,
           (_rows(), _addr("q"), _keys(), _addr("kv"), _addr("index", "idx"), _addr("bias"), _head(),
            _FLAG_BIAS),
           ("q", "kv", "index", "bias", "param"), (),
           "For each row's kept keys of the chunk: exact INT16 q.k times qk_scale plus bias, online "
           "softmax update (stays exact across chunks), P.V accumulation."),
    OpSpec("A.NORM", 26, Unit.ATTEND, (_rows(), _addr("out"), _head()), ("param",), ("out",),
           "Write acc * sv / sum as FP32 rows [rows, D] to `out`; a row with no kept key writes zeros."),
    # STORE ----------------------------------------------------------------------------------------
    OpSpec("ST.OUT", 32, Unit.STORE, (_DRAM, _rows(), _addr("out", "buf")), ("out",), ("dram",),
           "Store `rows` FP32 output rows (rows * D * 4 bytes) from `buf` to `dram`."),
)

BY_MNEMONIC: dict[str, OpSpec] = {op.mnemonic: op for op in OPS}
BY_OPCODE: dict[int, OpSpec] = {op.opcode: op for op in OPS}
assert len(BY_MNEMONIC) == len(OPS) and len(BY_OPCODE) == len(OPS)
assert all(0 < op.opcode < (1 << OPCODE_BITS) for op in OPS)


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: its declaration and its field values (in declaration order)."""

    op: OpSpec
    args: tuple[int, ...]

    def __getattr__(self, name: str) -> Any:
        # only reached for names that are not dataclass attributes
        try:
            return self.args[self.op.field_names.index(name)]
        except ValueError:
            raise AttributeError(f"{self.op.mnemonic} has no field {name!r}") from None

    @property
    def unit(self) -> Unit | None:
        if self.op.unit is not None:
            return self.op.unit
        if "unit" in self.op.field_names:
            return Unit(self.args[self.op.field_names.index("unit")])
        return None

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.op.field_names, self.args))


def make(mnemonic: str, **values: int) -> Instruction:
    """Build an instruction by name; omitted fields take their declared default."""
    try:
        op = BY_MNEMONIC[mnemonic.upper()]
    except KeyError:
        raise EncodingError(f"unknown instruction {mnemonic!r}") from None
    args = []
    for f in op.fields:
        if f.name in values:
            args.append(int(values.pop(f.name)))
        elif f.default is not None:
            args.append(f.default)
        else:
            raise EncodingError(f"{op.mnemonic}: missing field {f.name!r}")
    if values:
        raise EncodingError(f"{op.mnemonic} has no field(s) {', '.join(sorted(values))}; "
                            f"fields are {', '.join(op.field_names)}")
    return Instruction(op, tuple(args))
