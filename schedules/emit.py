"""Program emission: a workload and its schedule become an Energon program with its memory map.

The four units get one instruction stream each, synchronised only by dependency tokens:

* LOAD: per query tile, ``prefetch`` (Q, bias, K bit-planes) and, once the filter has selected,
  ``gather`` (only the kept K/V rows, chunk by chunk: into K/V chunk slots with LD.KV, or, with K/V
  resident per head, only the kept rows not yet resident with LD.KVR). Prefetches run
  ``tile_slots - 1`` tiles ahead of gathers, which is what lets the Filtering Unit work on tile i+1
  while the Attention Unit works on tile i (dense, a tile's first chunk is gathered before the
  prefetch that waits for a tile slot: see ``_early_gather``).
* FILTER: initial candidates (mask, causal), then every round: scores over all chunks, then the
  threshold and selector over all chunks; a tile whose stored scores do not fit the score buffer
  runs the rounds share by share of its rows (``TilingPlan.filter_tiles``).
* ATTEND: online softmax over the gathered chunks (in the unit's own state), then normalisation into
  an output slot, which alone waits for that slot's previous tile to be stored.
* STORE: the tile's output rows.

Buffers hold ``slots`` copies of each per-tile operand, as the schedule's
:class:`~energon_tvm.schedules.schedule.TilingPlan` lays them out; a slot is handed back to its producer
with a "free" token once its last consumer is done, and the consumers start with as many free credits
as there are slots (as VTA's dependency queues do). Chunks entirely above a causal diagonal are never
loaded, filtered or attended.

:class:`ProgramCounter` runs the same emitter with its output replaced by a count, so that the tuner's
instruction budget is the emitter's own number, for thousands of schedules in seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..isa.config import HardwareConfig
from ..isa.instructions import BiasMode, Instruction, Reg, ThresholdRule, Unit, make
from ..isa.program import MemoryMap, Program, Region
from .schedule import Schedule, TilingPlan, check_plan, plan_tiling
from .workload import AttentionWorkload

# dependency tokens: (producer -> consumer)
TILE_LOADED = 0     # load -> filter: Q (and bias) of a tile are in their slot
TILE_FREE = 1       # attend -> load: the tile's Q/bias slot may be overwritten
GATHER_READY = 2    # filter -> load: the tile's final kept bits are in the index buffer
KV_LOADED = 3       # load -> attend: a gathered K/V chunk is in its slot
KV_FREE = 4         # attend -> load: a K/V chunk slot may be overwritten
INDEX_READY = 5     # filter -> attend: the tile's kept bits are final
INDEX_FREE = 6      # attend -> filter: the tile's index slot may be overwritten
OUT_READY = 7       # attend -> store
OUT_FREE = 8        # store -> attend
PLANES_LOADED = 9   # load -> filter: K bit-planes (a head's, or one chunk's) are in place
PLANES_FREE = 10    # filter -> load: their slot may be overwritten

ALIGN = 64


@dataclass(frozen=True)
class Tile:
    slot: int   # head slot: b * H + h
    b: int
    h: int
    q0: int
    rows: int
    first_of_head: bool
    last_of_head: bool
    bias_group: int = 0      # the run of tiles sharing one bias slot (see _Emitter.tiles)
    loads_bias: bool = True  # the first tile of its bias group: it loads the group's bias

    @property
    def label(self) -> str:
        """What the tile's instructions are labelled with in listings: its head slot and query rows."""
        return f"h{self.slot} q{self.q0}-{self.q0 + self.rows - 1}"

    def chunk_label(self, k0: int, keys: int, filter_round: int | None = None) -> str:
        """The label of the tile's work on keys k0 .. k0 + keys - 1 (in filter round ``filter_round``)."""
        label = f"{self.label} k{k0}-{k0 + keys - 1}"
        return label if filter_round is None else f"{label} r{filter_round}"


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_memory(w: AttentionWorkload) -> MemoryMap:
    """The DRAM regions of an attention program, in the layouts :mod:`energon_tvm.runtime_sim.driver`
    fills."""
    b, h, sq, sk, d = w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim
    specs = [("param", "float64", (b * h, 2), "head slot (b-major) x (qk_scale, sv)"),
             ("q", "int16", (b, h, sq, d), "BHSD"),
             ("kplanes", "uint8", (b, h, 16, sk, d // 8), "BH x plane (MSB first) x S x D/8 bits"),
             # a key's V row follows its K row: a gather's run of adjacent kept keys is one DRAM segment
             ("kv", "int16", (b, h, sk, 2, d), "BHS x (K row, V row) x D")]
    if w.bias_shape is not None:
        # the key axis is never broadcast in DRAM: the machine reads bias rows of Sk values (the driver
        # expands a bias given with one value for every key)
        specs.append(("bias", "float32", w.bias_shape4[:3] + (sk,), "additive mask/bias, broadcast dims kept at 1"))
    specs.append(("out", "float32", (b, h, sq, d), "BHSD"))
    regions, offset = [], 0
    for name, dtype, shape, layout in specs:
        region = Region(name, offset, dtype, shape, layout)
        regions.append(region)
        offset = _align(region.end)
    return MemoryMap(tuple(regions))


def kv_rows(memory: MemoryMap) -> tuple[int, int]:
    """Bytes of one K (or V) row in ``memory``'s ``kv`` region, and from one key's rows to the next's
    (V follows K, the next key both)."""
    kv = memory["kv"]
    row = kv.nbytes // math.prod(kv.shape[:-1])
    return row, row * kv.shape[-2]


def program_header(w: AttentionWorkload, memory: MemoryMap) -> list[Instruction]:
    """The ``SETR`` header of every program for ``w`` laid out as ``memory`` (see :func:`plan_memory`)."""
    row, stride = kv_rows(memory)
    return [make("SETR", reg=Reg.HEAD_DIM, value=w.head_dim), make("SETR", reg=Reg.SEQ_Q, value=w.seq_q),
            make("SETR", reg=Reg.SEQ_K, value=w.seq_k),
            make("SETR", reg=Reg.V_OFFSET, value=row), make("SETR", reg=Reg.KV_STRIDE, value=stride),
            make("SETR", reg=Reg.CAUSAL_SHIFT, value=w.causal_shift & 0xFFFFFFFF)]


def program_meta(w: AttentionWorkload, s: Schedule) -> dict:
    """The metadata of a program for ``w`` tiled by ``s``, less its per-instruction labels."""
    return {"workload": w.to_dict(), "schedule": s.to_dict(), "scale": w.effective_scale, "heads": w.batch * w.heads}


class _Emitter:
    def __init__(self, plan: TilingPlan, cfg: HardwareConfig, memory: MemoryMap | None = None):
        self.plan, self.cfg = plan, cfg
        self.w, self.s = w, s = plan.workload, plan.schedule
        self.mm = plan_memory(w) if memory is None else memory
        self.kv_stride = kv_rows(self.mm)[1]
        self.early_gather = _early_gather(plan)
        self.d = w.head_dim
        self.buf = dict(plan.buffers)  # a plain dict: the address helpers look it up per instruction
        self.bias_mode = plan.bias_mode
        self.rounds = w.params.rounds
        self.passes = 1 if s.filter_mode == "store" else 2  # streamed planes are needed by both passes
        self.whole_row = plan.whole_row
        self.streams: dict[Unit, list[tuple[Instruction, str]]] = {u: [] for u in Unit}
        self.order: list[tuple[Unit, int, int]] = []  # program order: (unit, start, end) stream slices
        # running counters of K/V chunk slots and streamed plane slots, per consuming unit
        self.kv_counter = 0
        self.kv_counter_a = 0
        self.plane_counter = 0
        self.plane_counter_f = 0

    # -- helpers ------------------------------------------------------------------------------------
    def put(self, stream: Unit, label: str, mnemonic: str, **fields) -> None:
        self.streams[stream].append((make(mnemonic, **fields), label))

    def sync(self, unit: Unit, mnemonic: str, token: int, label: str = "") -> None:
        self.put(unit, label, mnemonic, unit=int(unit), token=token)

    def block(self, unit: Unit, fn, *args) -> None:
        start = len(self.streams[unit])
        fn(*args)
        self.order.append((unit, start, len(self.streams[unit])))

    def chunks(self, t: Tile) -> list[tuple[int, int]]:
        """Key chunks (k0, keys) the tile needs: all, less those above the causal diagonal."""
        return self.plan.chunks(t.q0, t.rows)

    def filter_chunks(self, t: Tile) -> list[tuple[int, int]]:
        """Key chunks of the Filtering Unit: the whole row at once when it can (see ``whole_row``)."""
        return [(0, self.w.seq_k)] if self.whole_row else self.chunks(t)

    # buffer addresses: tile i's slot (or head slot, or j-th chunk's) as the plan lays them out, plus where
    # key k0 starts within it
    def q_addr(self, i: int) -> int:
        return self.buf["q"].addr(i)

    def idx_addr(self, i: int, k0: int) -> int:
        return self.buf["index"].addr(i, k0 // 8)  # a bit per key

    def bias_addr(self, t: Tile, k0: int) -> int:
        """Where key k0 of tile ``t``'s bias starts: in its bias group's slot, chunk-major ([chunk][row][key])."""
        return self.buf["bias"].addr(t.bias_group, k0 * self.plan.bias_rows * 4)

    def bias_chunks(self, t: Tile) -> list[tuple[int, int]]:
        """Key chunks (k0, keys) of the bias the first tile of a bias group loads: its own chunks for a
        per-row tile; for a padding row, which every tile of the group reads, the chunks of the group's
        widest tile (under a causal mask, its last rows see the most keys)."""
        if self.bias_mode == BiasMode.TILE or self.whole_row:
            return self.filter_chunks(t)
        return self.plan.chunks(0, self.w.seq_q)

    def score_addr(self, k0: int, n: int) -> int:
        """Round n's score tile of the chunk at k0: chunk-major, [chunk][row][key] over a filter sub-tile."""
        return self.buf["score"].addr(0, k0 * self.plan.filter_rows * self.plan.score_bytes[n - 1])

    def head_planes_addr(self, t: Tile, k0: int) -> int:
        return self.buf["kplane"].addr(t.slot, k0 * self.d * self.plan.plane_bits // 8)

    def streamed_planes_addr(self, n: int) -> int:
        """The slot of the n-th streamed chunk of planes ("chunk" mode)."""
        return self.buf["kplane"].addr(n)

    def kv_addr(self, j: int, k0: int = 0) -> int:
        return self.plan.kv_chunk_addr(j, k0)

    def out_addr(self, i: int) -> int:
        return self.buf["out"].addr(i)

    # DRAM addresses
    def dram_q(self, t: Tile, base: str = "q") -> int:
        r = self.mm[base]
        row = ((t.b * self.w.heads + t.h) * self.w.seq_q + t.q0)
        return r.offset + row * self.d * (4 if base == "out" else 2)

    def dram_kv(self, t: Tile, k0: int) -> int:
        return self.mm["kv"].offset + ((t.slot * self.w.seq_k) + k0) * self.kv_stride

    def dram_planes(self, t: Tile, k0: int) -> int:
        return self.mm["kplanes"].offset + (t.slot * 16 * self.w.seq_k + k0) * self.d // 8

    def dram_bias(self, t: Tile, k0: int) -> int:
        bb, bh, bq, _ = self.w.bias_shape4
        r = self.mm["bias"]
        head = (t.b if bb > 1 else 0) * bh + (t.h if bh > 1 else 0)
        q0 = t.q0 if bq > 1 else 0
        return r.offset + ((head * bq + q0) * self.w.seq_k + k0) * 4

    # -- per-unit work of one tile --------------------------------------------------------------------
    def load_planes(self, t: Tile, label: str, lo: int, hi: int, k0: int, keys: int, buf: int) -> None:
        self.put(Unit.LOAD, label, "LD.KP", dram=self.dram_planes(t, k0), keys=keys, plane_lo=lo, plane_hi=hi,
                 buf=buf)

    def prefetch(self, i: int, t: Tile) -> None:
        lab = t.label
        if self.rounds and self.s.plane_mode == "head" and t.first_of_head:
            self.sync(Unit.LOAD, "WAIT", PLANES_FREE, lab)
            lo = 0
            for r in self.rounds:  # each round fetches only the planes the previous ones did not
                if r.k_bits > lo:
                    for k0, keys in ([(0, self.w.seq_k)] if self.whole_row else self.plan.all_chunks()):
                        self.load_planes(t, f"h{t.slot} planes {lo}-{r.k_bits - 1}", lo, r.k_bits, k0, keys,
                                         self.head_planes_addr(t, k0))
                    lo = r.k_bits
            self.sync(Unit.LOAD, "SIGNAL", PLANES_LOADED, lab)
        self.sync(Unit.LOAD, "WAIT", TILE_FREE, lab)
        self.put(Unit.LOAD, lab, "LD.Q", dram=self.dram_q(t), rows=t.rows, buf=self.q_addr(i))
        if self.bias_mode != BiasMode.NONE and t.loads_bias:
            # a whole-row filter reads the tile's padding row over every key: one row, all of Sk, at once
            for k0, keys in self.bias_chunks(t):
                rows = t.rows if self.bias_mode == BiasMode.TILE else 1
                self.put(Unit.LOAD, t.chunk_label(k0, keys), "LD.BIAS", dram=self.dram_bias(t, k0),
                         rows=rows, keys=keys, buf=self.bias_addr(t, k0))
        self.sync(Unit.LOAD, "SIGNAL", TILE_LOADED, lab)
        if self.rounds and self.s.plane_mode == "chunk":
            for n, r in enumerate(self.rounds, 1):
                for k0, keys in self.chunks(t) * self.passes:
                    self.sync(Unit.LOAD, "WAIT", PLANES_FREE, lab)
                    buf = self.streamed_planes_addr(self.plane_counter)
                    self.plane_counter += 1
                    self.load_planes(t, t.chunk_label(k0, keys, n), 0, r.k_bits, k0, keys, buf)
                    self.sync(Unit.LOAD, "SIGNAL", PLANES_LOADED, lab)

    def gather(self, i: int, t: Tile) -> None:
        self.sync(Unit.LOAD, "WAIT", GATHER_READY, t.label)
        if self.plan.kv_resident:
            self.gather_resident(i, t)
            return
        self.gather_chunks(i, t, self.chunks(t))

    def gather_opening(self, i: int, t: Tile) -> None:
        """The gather's first chunk (see :attr:`early_gather`)."""
        self.sync(Unit.LOAD, "WAIT", GATHER_READY, t.label)
        self.gather_chunks(i, t, self.chunks(t)[:1])

    def gather_rest(self, i: int, t: Tile) -> None:
        self.gather_chunks(i, t, self.chunks(t)[1:])

    def gather_chunks(self, i: int, t: Tile, chunks: list[tuple[int, int]]) -> None:
        """LD.KV of the tile's kept K/V rows of ``chunks``, each into the next chunk slot."""
        lab = t.label
        for k0, keys in chunks:
            self.sync(Unit.LOAD, "WAIT", KV_FREE, lab)
            self.put(Unit.LOAD, t.chunk_label(k0, keys), "LD.KV", dram=self.dram_kv(t, k0), keys=keys,
                     rows=t.rows, idx=self.idx_addr(i, k0), buf=self.kv_addr(self.kv_counter))
            self.kv_counter += 1
            self.sync(Unit.LOAD, "SIGNAL", KV_LOADED, lab)

    def gather_resident(self, i: int, t: Tile) -> None:
        """The tile's kept K/V rows that no earlier tile of its head gathered, into the head's resident
        K/V; the head's region is waited for by its first tile and freed after its last."""
        lab, plan = t.label, self.plan
        if t.first_of_head:
            self.sync(Unit.LOAD, "WAIT", KV_FREE, lab)
        # chunks an earlier tile of the head reached hold resident keys; the others start empty
        seen = 0 if t.first_of_head else plan.chunk_count(t.q0 - plan.rows, plan.rows)
        for c, (k0, keys) in enumerate(self.chunks(t)):
            self.put(Unit.LOAD, t.chunk_label(k0, keys), "LD.KVR", dram=self.dram_kv(t, k0), keys=keys,
                     rows=t.rows, idx=self.idx_addr(i, k0), res=plan.resident_addr(t.slot, k0),
                     buf=self.kv_addr(t.slot, k0), first=int(c >= seen))
        self.sync(Unit.LOAD, "SIGNAL", KV_LOADED, lab)

    def filter(self, i: int, t: Tile) -> None:
        lab = t.label
        chunks = self.filter_chunks(t)
        self.sync(Unit.FILTER, "WAIT", TILE_LOADED, lab)
        if self.rounds and self.s.plane_mode == "head" and t.first_of_head:
            self.sync(Unit.FILTER, "WAIT", PLANES_LOADED, lab)
        self.sync(Unit.FILTER, "WAIT", INDEX_FREE, lab)
        for k0, keys in chunks:
            self.put(Unit.FILTER, t.chunk_label(k0, keys), "F.CAND", rows=t.rows, q0=t.q0, k0=k0, keys=keys,
                     idx=self.idx_addr(i, k0), bias=self.bias_addr(t, k0), head=t.slot, causal=int(self.w.causal),
                     biasmode=int(self.bias_mode))
        for r0, rows in self.plan.filter_tiles(t.rows):
            self.filter_rounds(i, t, r0, rows, chunks)
        self.sync(Unit.FILTER, "SIGNAL", GATHER_READY, lab)
        self.sync(Unit.FILTER, "SIGNAL", INDEX_READY, lab)
        if self.rounds and self.s.plane_mode == "head" and t.last_of_head:
            self.sync(Unit.FILTER, "SIGNAL", PLANES_FREE, lab)

    def filter_rounds(self, i: int, t: Tile, r0: int, rows: int, chunks: list[tuple[int, int]]) -> None:
        """Every round over ``rows`` of tile ``t``'s rows from its row ``r0`` (a filter sub-tile): scores
        over all chunks, then the threshold and selector over all chunks."""
        store = self.s.filter_mode == "store"
        q, q0 = self.q_addr(i) + r0 * self.d * 2, t.q0 + r0

        def idx(k0: int) -> int:
            return self.idx_addr(i, k0) + r0 * self.plan.index_row_bytes

        def bias(k0: int, keys: int) -> int:  # a per-row bias tile is [row][key] per chunk; a padding row is shared
            return self.bias_addr(t, k0) + (r0 * keys * 4 if self.bias_mode == BiasMode.TILE else 0)

        for n, r in enumerate(self.rounds, 1):
            for c, (k0, keys) in enumerate(chunks):  # pass 1: scores and per-row statistics
                clab = t.chunk_label(k0, keys, n)
                kp = self.planes_in(t, k0, clab)
                self.put(Unit.FILTER, clab, "F.SCORE", qb=r.q_bits, kb=r.k_bits, rows=rows, q=q,
                         kp=kp, keys=keys, sc=self.score_addr(k0, n) if store else 0, idx=idx(k0),
                         bias=bias(k0, keys), head=t.slot, first=int(c == 0), biasmode=int(self.bias_mode),
                         store=int(store), narrow=int(store and self.plan.score_bytes[n - 1] == 2))
                self.planes_out(clab)
            for k0, keys in chunks:  # pass 2: threshold and selector
                clab = t.chunk_label(k0, keys, n)
                if store:
                    self.put(Unit.FILTER, clab, "F.SELECT", round=n, rows=rows, q0=q0,
                             k0=k0, keys=keys, sc=self.score_addr(k0, n), idx=idx(k0), head=t.slot,
                             narrow=int(self.plan.score_bytes[n - 1] == 2), **self.threshold(r, t))
                    continue
                kp = self.planes_in(t, k0, clab)
                self.put(Unit.FILTER, clab, "F.RESELECT", qb=r.q_bits, kb=r.k_bits, round=n, **self.threshold(r, t),
                         rows=rows, q0=q0, k0=k0, keys=keys, q=q, kp=kp, idx=idx(k0),
                         bias=bias(k0, keys), head=t.slot, biasmode=int(self.bias_mode))
                self.planes_out(clab)

    def threshold(self, r, t: Tile) -> dict[str, int]:
        """The threshold fields of round ``r``'s selects for tile ``t``: its head's own value (a head of
        every batch element shares it), under the round's rule."""
        rule = ThresholdRule.of(r.rule)
        return {"rule": int(rule), "alpha": 0, "gap": 0, "keep": 0, rule.value_field: r.fixed(t.h)}

    def planes_in(self, t: Tile, k0: int, label: str) -> int:
        """Where the filter reads a chunk's planes; streamed planes are waited for first."""
        if self.s.plane_mode != "chunk":
            return self.head_planes_addr(t, k0)
        self.sync(Unit.FILTER, "WAIT", PLANES_LOADED, label)
        buf = self.streamed_planes_addr(self.plane_counter_f)
        self.plane_counter_f += 1
        return buf

    def planes_out(self, label: str) -> None:
        if self.s.plane_mode == "chunk":
            self.sync(Unit.FILTER, "SIGNAL", PLANES_FREE, label)

    def attend(self, i: int, t: Tile) -> None:
        lab = t.label
        self.sync(Unit.ATTEND, "WAIT", INDEX_READY, lab)
        self.put(Unit.ATTEND, lab, "A.INIT", rows=t.rows)
        resident = self.plan.kv_resident
        if resident:  # one signal per tile: all its chunks are in the head's K/V
            self.sync(Unit.ATTEND, "WAIT", KV_LOADED, lab)
        for k0, keys in self.chunks(t):
            if not resident:
                self.sync(Unit.ATTEND, "WAIT", KV_LOADED, lab)
            kv = self.kv_addr(t.slot, k0) if resident else self.kv_addr(self.kv_counter_a)
            self.put(Unit.ATTEND, t.chunk_label(k0, keys), "A.ATTN", rows=t.rows, q=self.q_addr(i), keys=keys,
                     kv=kv, idx=self.idx_addr(i, k0), bias=self.bias_addr(t, k0),
                     head=t.slot, biasmode=int(self.bias_mode))
            if not resident:
                self.kv_counter_a += 1
                self.sync(Unit.ATTEND, "SIGNAL", KV_FREE, lab)
        # the online softmax runs in the unit's own state: only A.NORM writes the out buffer, so only it
        # waits for the slot's previous tile to be stored
        self.sync(Unit.ATTEND, "WAIT", OUT_FREE, lab)
        self.put(Unit.ATTEND, lab, "A.NORM", rows=t.rows, out=self.out_addr(i), head=t.slot)
        if resident and t.last_of_head:
            self.sync(Unit.ATTEND, "SIGNAL", KV_FREE, lab)
        self.sync(Unit.ATTEND, "SIGNAL", TILE_FREE, lab)
        self.sync(Unit.ATTEND, "SIGNAL", INDEX_FREE, lab)
        self.sync(Unit.ATTEND, "SIGNAL", OUT_READY, lab)

    def store(self, i: int, t: Tile) -> None:
        lab = t.label
        self.sync(Unit.STORE, "WAIT", OUT_READY, lab)
        self.put(Unit.STORE, lab, "ST.OUT", dram=self.dram_q(t, "out"), rows=t.rows, buf=self.out_addr(i))
        self.sync(Unit.STORE, "SIGNAL", OUT_FREE, lab)

    # -- the whole program ------------------------------------------------------------------------------
    def tiles(self) -> list[Tile]:
        """Every query tile in program order, each with its bias group (:meth:`TilingPlan.bias_group_key`)."""
        w, head = self.w, self.plan.head_tiles()
        tiles, key, group = [], None, -1
        for b in range(w.batch):
            for h in range(w.heads):
                for tile in head:  # a bias group is a run of consecutive tiles reading the same bias
                    first = self.plan.bias_group_key(b, h, len(tiles)) != key
                    if first:
                        key, group = self.plan.bias_group_key(b, h, len(tiles)), group + 1
                    tiles.append(Tile(b * w.heads + h, b, h, *tile, bias_group=group, loads_bias=first))
        return tiles

    def header(self) -> list[Instruction]:
        return program_header(self.w, self.mm)

    def trailer(self) -> list[Instruction]:
        return [make("HALT")]

    def prologue(self) -> None:
        """The parameter load and every consumer's initial credits: as many as the slots it may fill."""
        w, s = self.w, self.s
        self.block(Unit.LOAD, lambda: self.put(Unit.LOAD, "all heads", "LD.PARAM", dram=self.mm["param"].offset,
                                               heads=w.batch * w.heads, buf=0))

        def credits():
            for _ in range(s.tile_slots):
                self.sync(Unit.ATTEND, "SIGNAL", TILE_FREE, "initial credit")
                self.sync(Unit.ATTEND, "SIGNAL", INDEX_FREE, "initial credit")
            for _ in range(s.kv_slots):
                self.sync(Unit.ATTEND, "SIGNAL", KV_FREE, "initial credit")
        self.block(Unit.ATTEND, credits)
        self.block(Unit.STORE, lambda: [self.sync(Unit.STORE, "SIGNAL", OUT_FREE, "initial credit")
                                        for _ in range(s.out_slots)])
        if self.rounds:
            self.block(Unit.FILTER, lambda: [self.sync(Unit.FILTER, "SIGNAL", PLANES_FREE, "initial credit")
                                             for _ in range(self.plan.plane_slots)])

    def run_ahead(self) -> tuple[tuple[Unit, Callable[[int, Tile], None]], ...]:
        """A tile's blocks that run ahead of the Attention Unit (tile_slots - 1 tiles ahead)."""
        return (Unit.LOAD, self.prefetch), (Unit.FILTER, self.filter)

    def in_order(self) -> tuple[tuple[Unit, Callable[[int, Tile], None]], ...]:
        """A tile's blocks that follow the Attention Unit (with :attr:`early_gather`, the first of them
        goes before the tile's last prefetch)."""
        gather = ((Unit.LOAD, self.gather_opening), (Unit.LOAD, self.gather_rest)) if self.early_gather \
            else ((Unit.LOAD, self.gather),)
        return gather + ((Unit.ATTEND, self.attend), (Unit.STORE, self.store))

    def tile_blocks(self, tiles: list[Tile]) -> Iterator[tuple[Unit, Callable[[int, Tile], None], int, Tile]]:
        """(unit, work, i, tile) of every tile's blocks, in program order."""
        ahead, behind = self.run_ahead(), self.in_order()
        prefetched, lead, early = 0, self.plan.lead, int(self.early_gather)

        def prefetch_to(j):  # the loader runs ahead: prefetch(j) follows gather(j - lead)
            nonlocal prefetched
            while prefetched < min(j, len(tiles)):
                for unit, work in ahead:
                    yield unit, work, prefetched, tiles[prefetched]
                prefetched += 1

        for i, t in enumerate(tiles):
            yield from prefetch_to(i + lead - early)
            for unit, work in behind[:early]:
                yield unit, work, i, t
            yield from prefetch_to(i + lead)
            for unit, work in behind[early:]:
                yield unit, work, i, t

    def emit(self) -> Program:
        w, s = self.w, self.s
        header, trailer = self.header(), self.trailer()
        self.prologue()
        for unit, work, i, t in self.tile_blocks(self.tiles()):
            self.block(unit, work, i, t)

        code, labels = list(header), ["header"] * len(header)
        for unit, a, b in self.order:
            for ins, label in self.streams[unit][a:b]:
                code.append(ins)
                labels.append(label)
        code += trailer
        labels += ["end"] * len(trailer)
        return Program.build(self.cfg, code, self.mm, {**program_meta(w, s), "labels": labels})


def _early_gather(plan: TilingPlan) -> bool:
    """Whether a tile's first K/V chunk is gathered before the loader's prefetch that waits for the
    previous tile's attention to free a tile slot: with K/V in chunk slots, a lead of two or more, and no
    filter round (dense: the Filtering Unit only builds candidates, so a tile's kept bits are ready long
    before its gather). The opening chunk then waits only for its slot, freed before the previous tile's
    attention ends, and the tile's attention starts as that one ends. With filter rounds the kept bits
    may come late (the filter binding), and then the prefetch the next filter needs goes first: which
    unit binds depends on the sparsity, unknown when the program is emitted."""
    return not plan.kv_resident and plan.lead >= 2 and not plan.workload.params.rounds


class _Counter(_Emitter):
    """The emitter with ``put`` counting instead of emitting."""

    def __init__(self, plan: TilingPlan, cfg: HardwareConfig, memory: MemoryMap):
        super().__init__(plan, cfg, memory)
        self.count = 0

    def put(self, stream: Unit, label: str, mnemonic: str, **fields) -> None:
        self.count += 1

    def block(self, unit: Unit, fn, *args) -> None:
        fn(*args)


# The knobs a tile's blocks depend on: all but the slot counts, which they read only as address moduli.
_TILE_KNOBS = tuple(f.name for f in dataclasses.fields(Schedule) if f.name not in ("tile_slots", "kv_slots",
                                                                                    "out_slots"))


class ProgramCounter:
    """``len(emit_program(...).code)`` for schedules of one workload on one machine, counted by the
    emitter itself (its ``put`` counting) without building programs.

    Every head emits the same instructions (only addresses and labels differ), so one head is counted
    and multiplied; within it, a tile's blocks run once per tile class (rows, key chunks, first or last
    of its head: their instructions depend on the tile through nothing else). A tile's blocks read the
    schedule's slot counts only as address moduli (:meth:`BufferPlan.addr`), so schedules that differ in
    slots alone share the counts of their tile classes: a counter kept for a whole search space counts
    each class's blocks once.
    """

    def __init__(self, workload: AttentionWorkload, cfg: HardwareConfig):
        self.workload, self.cfg = workload, cfg
        self.memory = plan_memory(workload)
        self._frame: int | None = None  # header and trailer: the workload's alone
        self._classes: dict[tuple, list[tuple[tuple, int, Tile, int]]] = {}
        self._counts: dict[tuple, int] = {}

    def count(self, plan: TilingPlan, *, limit: int | None = None) -> int:
        """Instructions of ``plan``'s program (a plan that fits; not checked here). With ``limit``,
        counting stops once the count exceeds it, and the number returned is only known to be above it."""
        if plan.workload != self.workload:
            raise ValueError(f"this counter counts programs of {self.workload.key()}, not {plan.workload.key()}")
        em = _Counter(plan, self.cfg, self.memory)
        if self._frame is None:
            self._frame = len(em.header()) + len(em.trailer())
        em.prologue()
        fixed = self._frame + em.count
        heads = self.workload.batch * self.workload.heads
        shared = tuple(getattr(plan.schedule, knob) for knob in _TILE_KNOBS)
        classes = self._classes.get(shared)
        if classes is None:
            classes = self._classes[shared] = _tile_classes(plan)
        if plan.bias_mode == BiasMode.ROW:  # shared padding rows: counted per bias group, not per tile
            fixed += plan.bias_groups * len(em.bias_chunks(classes[0][2]))
        per_head = 0
        for key, i, tile, tiles in classes:
            n = self._counts.get((shared, key))
            if n is None:
                em.count = 0
                for _unit, work in em.run_ahead() + em.in_order():
                    work(i, tile)
                n = self._counts[(shared, key)] = em.count
            per_head += tiles * n
            if limit is not None and fixed + heads * per_head > limit:
                break  # over the budget already: the exact size is not needed
        return fixed + heads * per_head


def _tile_classes(plan: TilingPlan) -> list[tuple[tuple, int, Tile, int]]:
    """(class, index and tile of its first member, members) of each tile class of a head."""
    classes: dict[tuple, list] = {}
    per_tile_bias = plan.bias_mode == BiasMode.TILE  # a padding row is loaded per bias group instead
    for i, (q0, rows, first, last) in enumerate(plan.head_tiles()):
        key = (rows, plan.chunk_count(q0, rows), first, last)
        seen = classes.get(key)
        if seen is None:
            classes[key] = [key, i, Tile(0, 0, 0, q0, rows, first, last, loads_bias=per_tile_bias), 1]
        else:
            seen[3] += 1
    return [tuple(c) for c in classes.values()]


def emit_program(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> Program:
    """The program for ``workload`` tiled by ``schedule`` on ``cfg``; the same inputs always give the
    same program bytes."""
    plan = plan_tiling(workload, schedule, cfg)
    check_plan(plan, cfg)
    return _Emitter(plan, cfg).emit()


def count_instructions(plan: TilingPlan, cfg: HardwareConfig) -> int:
    """``len(emit_program(...).code)`` of a plan that fits (not checked here), without building the program
    (see :class:`ProgramCounter`, which many counts of one workload should share)."""
    return ProgramCounter(plan.workload, cfg).count(plan)
