"""Program emission: a workload and its schedule become an Energon program with its memory map.

The four units get one instruction stream each, synchronised only by dependency tokens:

* LOAD: per query tile, ``prefetch`` (Q, bias, K bit-planes) and, once the filter has selected,
  ``gather`` (only the kept K/V rows, chunk by chunk). Prefetches run ``tile_slots - 1`` tiles ahead
  of gathers, which is what lets the Filtering Unit work on tile i+1 while the Attention Unit works on
  tile i.
* FILTER: initial candidates (mask, causal), then every round: scores over all chunks, then the
  threshold and selector over all chunks.
* ATTEND: online softmax over the gathered chunks, then normalisation.
* STORE: the tile's output rows.

Buffers hold ``slots`` copies of each per-tile operand; a slot is handed back to its producer with a
"free" token once its last consumer is done, and the consumers start with as many free credits as
there are slots (as VTA's dependency queues do). Chunks entirely above a causal diagonal are never
loaded, filtered or attended.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..isa.config import HardwareConfig
from ..isa.instructions import BiasMode, Instruction, Reg, Unit, make
from ..isa.program import MemoryMap, Program, Region
from .schedule import (
    CHUNK_PLANE_SLOTS,
    Schedule,
    check_fits,
    chunk_keys,
    head_plane_slots,
    plane_bits,
)
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


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_memory(w: AttentionWorkload) -> MemoryMap:
    """The DRAM regions of an attention program, in the layouts :mod:`energon_tvm.runtime_sim.driver`
    fills."""
    b, h, sq, sk, d = w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim
    specs = [("param", "float64", (b * h, 2), "head slot (b-major) x (qk_scale, sv)"),
             ("q", "int16", (b, h, sq, d), "BHSD"),
             ("kplanes", "uint8", (b, h, 16, sk, d // 8), "BH x plane (MSB first) x S x D/8 bits"),
             ("k", "int16", (b, h, sk, d), "BHSD"),
             ("v", "int16", (b, h, sk, d), "BHSD")]
    if w.bias_shape is not None:
        specs.append(("bias", "float32", w.bias_shape4, "additive mask/bias, broadcast dims kept at 1"))
    specs.append(("out", "float32", (b, h, sq, d), "BHSD"))
    regions, offset = [], 0
    for name, dtype, shape, layout in specs:
        region = Region(name, offset, dtype, shape, layout)
        regions.append(region)
        # v must follow k directly: LD.KV reaches V at a fixed offset (V_OFFSET) from K
        offset = region.end if name == "k" else _align(region.end)
    return MemoryMap(tuple(regions))


class _Emitter:
    def __init__(self, w: AttentionWorkload, s: Schedule, cfg: HardwareConfig):
        self.w, self.s, self.cfg = w, s, cfg
        self.mm = plan_memory(w)
        self.d = w.head_dim
        self.rows_max = min(s.q_tile, w.seq_q)
        self.keys_max = chunk_keys(w, s)
        self.row_bytes = (w.seq_k + 7) // 8
        self.sk_pad = self.row_bytes * 8
        bias = w.bias_shape4
        self.bias_mode = BiasMode.NONE if bias is None else (BiasMode.ROW if bias[2] == 1 else BiasMode.TILE)
        self.bias_rows = {BiasMode.NONE: 0, BiasMode.ROW: 1, BiasMode.TILE: self.rows_max}[self.bias_mode]
        self.rounds = w.params.rounds
        self.planes = plane_bits(w)
        self.plane_slots = head_plane_slots(w, cfg) if s.plane_mode == "head" else CHUNK_PLANE_SLOTS
        self.passes = 1 if s.filter_mode == "store" else 2  # streamed planes are needed by both passes
        # With a head's planes resident and no bias tile, the Filtering Unit takes a query tile's whole key
        # row in one instruction: its work is the same, the instruction count (and simulation time) is not.
        # Bias tiles are laid out chunk by chunk for the Attention Unit, so biased workloads filter by chunk.
        self.whole_row = bool(self.rounds) and s.plane_mode == "head" and self.bias_mode == BiasMode.NONE
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
        out = []
        last_q = t.q0 + t.rows - 1
        for k0 in range(0, self.w.seq_k, self.keys_max):
            if self.w.causal and k0 > last_q + self.w.causal_shift:
                break
            out.append((k0, min(self.keys_max, self.w.seq_k - k0)))
        return out

    def all_chunks(self) -> list[tuple[int, int]]:
        return [(k0, min(self.keys_max, self.w.seq_k - k0)) for k0 in range(0, self.w.seq_k, self.keys_max)]

    def filter_chunks(self, t: Tile) -> list[tuple[int, int]]:
        """Key chunks of the Filtering Unit: the whole row at once when it can (see ``whole_row``)."""
        return [(0, self.w.seq_k)] if self.whole_row else self.chunks(t)

    # buffer addresses
    def q_addr(self, i: int) -> int:
        return (i % self.s.tile_slots) * self.rows_max * self.d * 2

    def idx_addr(self, i: int, k0: int) -> int:
        return (i % self.s.tile_slots) * self.rows_max * self.row_bytes + k0 // 8

    def bias_addr(self, i: int, k0: int) -> int:
        if not self.bias_rows:
            return 0
        return ((i % self.s.tile_slots) * self.sk_pad + k0) * self.bias_rows * 4

    def score_addr(self, k0: int) -> int:
        return self.rows_max * k0 * 4

    def head_planes_addr(self, t: Tile, k0: int) -> int:
        per_head = self.sk_pad * self.d * self.planes // 8
        return (t.slot % self.plane_slots) * per_head + k0 * self.d * self.planes // 8

    def kv_addr(self, j: int) -> int:
        return (j % self.s.kv_slots) * 2 * self.keys_max * self.d * 2

    def out_addr(self, i: int) -> int:
        return (i % self.s.out_slots) * self.rows_max * self.d * 4

    # DRAM addresses
    def dram_q(self, t: Tile, base: str = "q") -> int:
        r = self.mm[base]
        row = ((t.b * self.w.heads + t.h) * self.w.seq_q + t.q0)
        return r.offset + row * self.d * (4 if base == "out" else 2)

    def dram_kv(self, t: Tile, k0: int) -> int:
        return self.mm["k"].offset + ((t.slot * self.w.seq_k) + k0) * self.d * 2

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
        lab = f"h{t.slot} q{t.q0}-{t.q0 + t.rows - 1}"
        if self.rounds and self.s.plane_mode == "head" and t.first_of_head:
            self.sync(Unit.LOAD, "WAIT", PLANES_FREE, lab)
            lo = 0
            for r in self.rounds:  # each round fetches only the planes the previous ones did not
                if r.k_bits > lo:
                    for k0, keys in ([(0, self.w.seq_k)] if self.whole_row else self.all_chunks()):
                        self.load_planes(t, f"h{t.slot} planes {lo}-{r.k_bits - 1}", lo, r.k_bits, k0, keys,
                                         self.head_planes_addr(t, k0))
                    lo = r.k_bits
            self.sync(Unit.LOAD, "SIGNAL", PLANES_LOADED, lab)
        self.sync(Unit.LOAD, "WAIT", TILE_FREE, lab)
        self.put(Unit.LOAD, lab, "LD.Q", dram=self.dram_q(t), rows=t.rows, buf=self.q_addr(i))
        if self.bias_mode != BiasMode.NONE:
            for k0, keys in self.chunks(t):
                rows = t.rows if self.bias_mode == BiasMode.TILE else 1
                self.put(Unit.LOAD, f"{lab} k{k0}-{k0 + keys - 1}", "LD.BIAS", dram=self.dram_bias(t, k0),
                         rows=rows, keys=keys, buf=self.bias_addr(i, k0))
        self.sync(Unit.LOAD, "SIGNAL", TILE_LOADED, lab)
        if self.rounds and self.s.plane_mode == "chunk":
            for n, r in enumerate(self.rounds, 1):
                for k0, keys in self.chunks(t) * self.passes:
                    self.sync(Unit.LOAD, "WAIT", PLANES_FREE, lab)
                    slot = self.plane_counter % self.plane_slots
                    self.plane_counter += 1
                    self.load_planes(t, f"{lab} k{k0}-{k0 + keys - 1} r{n}", 0, r.k_bits, k0, keys,
                                     slot * self.keys_max * self.d * self.planes // 8)
                    self.sync(Unit.LOAD, "SIGNAL", PLANES_LOADED, lab)

    def gather(self, i: int, t: Tile) -> None:
        lab = f"h{t.slot} q{t.q0}-{t.q0 + t.rows - 1}"
        self.sync(Unit.LOAD, "WAIT", GATHER_READY, lab)
        for k0, keys in self.chunks(t):
            self.sync(Unit.LOAD, "WAIT", KV_FREE, lab)
            self.put(Unit.LOAD, f"{lab} k{k0}-{k0 + keys - 1}", "LD.KV", dram=self.dram_kv(t, k0), keys=keys,
                     rows=t.rows, idx=self.idx_addr(i, k0), buf=self.kv_addr(self.kv_counter))
            self.kv_counter += 1
            self.sync(Unit.LOAD, "SIGNAL", KV_LOADED, lab)

    def filter(self, i: int, t: Tile) -> None:
        lab = f"h{t.slot} q{t.q0}-{t.q0 + t.rows - 1}"
        chunks = self.filter_chunks(t)
        self.sync(Unit.FILTER, "WAIT", TILE_LOADED, lab)
        if self.rounds and self.s.plane_mode == "head" and t.first_of_head:
            self.sync(Unit.FILTER, "WAIT", PLANES_LOADED, lab)
        self.sync(Unit.FILTER, "WAIT", INDEX_FREE, lab)
        for k0, keys in chunks:
            self.put(Unit.FILTER, f"{lab} k{k0}-{k0 + keys - 1}", "F.CAND", rows=t.rows, q0=t.q0, k0=k0, keys=keys,
                     idx=self.idx_addr(i, k0), bias=self.bias_addr(i, k0), head=t.slot, causal=int(self.w.causal),
                     biasmode=int(self.bias_mode))
        store = self.s.filter_mode == "store"
        for n, r in enumerate(self.rounds, 1):
            for c, (k0, keys) in enumerate(chunks):  # pass 1: scores and per-row statistics
                clab = f"{lab} k{k0}-{k0 + keys - 1} r{n}"
                kp = self.planes_in(t, k0, clab)
                self.put(Unit.FILTER, clab, "F.SCORE", qb=r.q_bits, kb=r.k_bits, rows=t.rows, q=self.q_addr(i),
                         kp=kp, keys=keys, sc=self.score_addr(k0) if store else 0, idx=self.idx_addr(i, k0),
                         bias=self.bias_addr(i, k0), head=t.slot, first=int(c == 0), biasmode=int(self.bias_mode),
                         store=int(store))
                self.planes_out(clab)
            for k0, keys in chunks:  # pass 2: threshold and selector
                clab = f"{lab} k{k0}-{k0 + keys - 1} r{n}"
                if store:
                    self.put(Unit.FILTER, clab, "F.SELECT", round=n, alpha=r.alpha_fixed, rows=t.rows, q0=t.q0,
                             k0=k0, keys=keys, sc=self.score_addr(k0), idx=self.idx_addr(i, k0), head=t.slot)
                    continue
                kp = self.planes_in(t, k0, clab)
                self.put(Unit.FILTER, clab, "F.RESELECT", qb=r.q_bits, kb=r.k_bits, round=n, alpha=r.alpha_fixed,
                         rows=t.rows, q0=t.q0, k0=k0, keys=keys, q=self.q_addr(i), kp=kp, idx=self.idx_addr(i, k0),
                         bias=self.bias_addr(i, k0), head=t.slot, biasmode=int(self.bias_mode))
                self.planes_out(clab)
        self.sync(Unit.FILTER, "SIGNAL", GATHER_READY, lab)
        self.sync(Unit.FILTER, "SIGNAL", INDEX_READY, lab)
        if self.rounds and self.s.plane_mode == "head" and t.last_of_head:
            self.sync(Unit.FILTER, "SIGNAL", PLANES_FREE, lab)

    def planes_in(self, t: Tile, k0: int, label: str) -> int:
        """Where the filter reads a chunk's planes; streamed planes are waited for first."""
        if self.s.plane_mode != "chunk":
            return self.head_planes_addr(t, k0)
        self.sync(Unit.FILTER, "WAIT", PLANES_LOADED, label)
        slot = self.plane_counter_f % self.plane_slots
        self.plane_counter_f += 1
        return slot * self.keys_max * self.d * self.planes // 8

    def planes_out(self, label: str) -> None:
        if self.s.plane_mode == "chunk":
            self.sync(Unit.FILTER, "SIGNAL", PLANES_FREE, label)

    def attend(self, i: int, t: Tile) -> None:
        lab = f"h{t.slot} q{t.q0}-{t.q0 + t.rows - 1}"
        self.sync(Unit.ATTEND, "WAIT", INDEX_READY, lab)
        self.sync(Unit.ATTEND, "WAIT", OUT_FREE, lab)
        self.put(Unit.ATTEND, lab, "A.INIT", rows=t.rows)
        for k0, keys in self.chunks(t):
            self.sync(Unit.ATTEND, "WAIT", KV_LOADED, lab)
            self.put(Unit.ATTEND, f"{lab} k{k0}-{k0 + keys - 1}", "A.ATTN", rows=t.rows, q=self.q_addr(i), keys=keys,
                     kv=self.kv_addr(self.kv_counter_a), idx=self.idx_addr(i, k0), bias=self.bias_addr(i, k0),
                     head=t.slot, biasmode=int(self.bias_mode))
            self.kv_counter_a += 1
            self.sync(Unit.ATTEND, "SIGNAL", KV_FREE, lab)
        self.put(Unit.ATTEND, lab, "A.NORM", rows=t.rows, out=self.out_addr(i), head=t.slot)
        self.sync(Unit.ATTEND, "SIGNAL", TILE_FREE, lab)
        self.sync(Unit.ATTEND, "SIGNAL", INDEX_FREE, lab)
        self.sync(Unit.ATTEND, "SIGNAL", OUT_READY, lab)

    def store(self, i: int, t: Tile) -> None:
        lab = f"h{t.slot} q{t.q0}-{t.q0 + t.rows - 1}"
        self.sync(Unit.STORE, "WAIT", OUT_READY, lab)
        self.put(Unit.STORE, lab, "ST.OUT", dram=self.dram_q(t, "out"), rows=t.rows, buf=self.out_addr(i))
        self.sync(Unit.STORE, "SIGNAL", OUT_FREE, lab)

    # -- the whole program ------------------------------------------------------------------------------
    def tiles(self) -> list[Tile]:
        w, out = self.w, []
        for b in range(w.batch):
            for h in range(w.heads):
                starts = list(range(0, w.seq_q, self.rows_max))
                for n, q0 in enumerate(starts):
                    out.append(Tile(b * w.heads + h, b, h, q0, min(self.rows_max, w.seq_q - q0), n == 0,
                                    n == len(starts) - 1))
        return out

    def emit(self) -> Program:
        w, s = self.w, self.s
        header = [make("SETR", reg=Reg.HEAD_DIM, value=self.d), make("SETR", reg=Reg.SEQ_Q, value=w.seq_q),
                  make("SETR", reg=Reg.SEQ_K, value=w.seq_k),
                  make("SETR", reg=Reg.V_OFFSET, value=self.mm["v"].offset - self.mm["k"].offset),
                  make("SETR", reg=Reg.CAUSAL_SHIFT, value=w.causal_shift & 0xFFFFFFFF)]
        self.put(Unit.LOAD, "all heads", "LD.PARAM", dram=self.mm["param"].offset, heads=w.batch * w.heads, buf=0)
        self.order.append((Unit.LOAD, 0, 1))

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
                                             for _ in range(self.plane_slots)])
        tiles = self.tiles()
        prefetched = 0
        for i, t in enumerate(tiles):
            # the loader runs tile_slots - 1 tiles ahead: prefetch(j) follows gather(j - tile_slots)
            while prefetched < min(i + s.tile_slots, len(tiles)):
                self.block(Unit.LOAD, self.prefetch, prefetched, tiles[prefetched])
                self.block(Unit.FILTER, self.filter, prefetched, tiles[prefetched])
                prefetched += 1
            self.block(Unit.LOAD, self.gather, i, t)
            self.block(Unit.ATTEND, self.attend, i, t)
            self.block(Unit.STORE, self.store, i, t)

        code, labels = list(header), ["header"] * len(header)
        for unit, a, b in self.order:
            for ins, label in self.streams[unit][a:b]:
                code.append(ins)
                labels.append(label)
        code.append(make("HALT"))
        labels.append("end")
        meta = {"workload": w.to_dict(), "schedule": s.to_dict(), "scale": w.effective_scale,
                "heads": w.batch * w.heads, "labels": labels}
        return Program.build(self.cfg, code, self.mm, meta)


def emit_program(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> Program:
    """The program for ``workload`` tiled by ``schedule`` on ``cfg``; the same inputs always give the
    same program bytes."""
    check_fits(workload, schedule, cfg)
    return _Emitter(workload, schedule, cfg).emit()
