"""Schedules: how one attention workload is tiled onto the machine, and whether it fits.

A :class:`Schedule` fixes the query tile, the key chunk, how many query tiles are in flight (the
run-ahead of the loader and the Filtering Unit over the Attention Unit), how many K/V chunk slots
the gather fills ahead of the Attention Unit, output buffering, and where K's bit-planes live (a
whole head resident, or streamed chunk by chunk).

:func:`plan_tiling` turns a (workload, schedule, machine) into its :class:`TilingPlan`, the one place
where tile and chunk sizes and every buffer's slots are computed: the fit check, the emitter's buffer
addresses and the tuner's features all read it. A schedule that does not fit is rejected with the
buffer, the bytes needed and the capacity.

:func:`default_schedule` is the heuristic: start from the smallest safe tiling, then grow the query
tile and the key chunk greedily while everything still fits (as Gemmini's ``tiled_matmul_auto``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from ..isa.config import BUFFERS, PARAM_BYTES_PER_HEAD, HardwareConfig
from ..isa.errors import ScheduleError
from ..isa.instructions import BiasMode
from .workload import AttentionWorkload

PLANE_MODES = ("head", "chunk")
FILTER_MODES = ("store", "recompute")
CHUNK_PLANE_SLOTS = 2  # streamed K planes: chunks in flight


@dataclass(frozen=True)
class Schedule:
    q_tile: int            # query rows per tile
    k_chunk: int           # keys per chunk (a multiple of 8)
    tile_slots: int = 2    # query tiles in flight: 1 = no run-ahead, 2 = double-buffered, 3 = ...
    kv_slots: int = 2      # gathered K/V chunks in flight
    out_slots: int = 2     # output tiles in flight
    plane_mode: str = "head"  # K bit-planes: "head" resident per head, or "chunk" streamed
    filter_mode: str = "store"  # "store" scores for F.SELECT, or "recompute" them (F.RESELECT)

    def __post_init__(self) -> None:
        for name in ("q_tile", "k_chunk", "tile_slots", "kv_slots", "out_slots"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ScheduleError(f"schedule {name} = {value!r} must be a positive integer")
        if self.k_chunk % 8:
            raise ScheduleError(f"schedule k_chunk = {self.k_chunk} must be a multiple of 8 (key chunks start "
                                f"on index-buffer bytes)")
        if self.plane_mode not in PLANE_MODES:
            raise ScheduleError(f"schedule plane_mode = {self.plane_mode!r}; one of {', '.join(PLANE_MODES)}")
        if self.filter_mode not in FILTER_MODES:
            raise ScheduleError(f"schedule filter_mode = {self.filter_mode!r}; one of {', '.join(FILTER_MODES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        try:
            return cls(**{k: d[k] for k in ("q_tile", "k_chunk", "tile_slots", "kv_slots", "out_slots",
                                            "plane_mode", "filter_mode") if k in d})
        except (KeyError, TypeError) as err:
            raise ScheduleError(f"malformed schedule record {d!r}: {err}") from None


def _ceil8(n: int) -> int:
    return (n + 7) // 8


@dataclass(frozen=True)
class BufferPlan:
    """One on-chip buffer's share of a tiling: ``slots`` copies of ``slot_bytes`` bytes, taken in turn."""

    slot_bytes: int
    slots: int

    @property
    def bytes(self) -> int:
        """Bytes the buffer must hold, every slot included."""
        return self.slot_bytes * self.slots

    def addr(self, n: int, offset: int = 0) -> int:
        """Buffer address of byte ``offset`` of the slot the ``n``-th user of the buffer takes (users
        rotate through the slots: tile i, head slot h, the j-th gathered chunk...)."""
        return (n % self.slots) * self.slot_bytes + offset


@dataclass(frozen=True)
class TilingPlan:
    """What a schedule makes of one workload on one machine, computed once by :func:`plan_tiling`.

    Tiles and chunks are the emitter's loops: a head's query rows in tiles of ``rows`` (the last may
    be shorter), each tile's keys in chunks of ``keys`` (the last across Sk may be shorter; a tile
    under a causal diagonal needs only the chunks it can see, :meth:`chunk_count`). ``buffers`` holds
    each on-chip buffer's slots in :data:`~energon_tvm.isa.config.BUFFERS` order. A plan is made for
    any schedule; :func:`check_plan` says whether it fits.
    """

    workload: AttentionWorkload
    schedule: Schedule
    rows: int             # query rows of a full tile
    keys: int             # keys of a full chunk
    tiles: int            # query tiles per head
    key_chunks: int       # chunks across all of Sk
    plane_bits: int       # K bit-planes the filter rounds read: the widest round's k_bits (0 when dense)
    whole_row: bool       # the Filtering Unit takes a tile's whole key row in one instruction
    bias_mode: BiasMode
    bias_rows: int        # bias rows a tile slot holds: 0 (no bias), 1 (a padding row shared by all rows), rows
    buffers: Mapping[str, BufferPlan] = field(hash=False)

    @property
    def plane_slots(self) -> int:
        """K bit-plane slots: heads resident at once ("head" mode) or chunks in flight ("chunk" mode)."""
        return self.buffers["kplane"].slots

    def usage(self) -> dict[str, int]:
        """Bytes each on-chip buffer must hold (all slots included), in BUFFERS order."""
        return {name: b.bytes for name, b in self.buffers.items()}

    def head_tiles(self) -> list[tuple[int, int, bool, bool]]:
        """(q0, rows, first of its head, last of its head) of each query tile of a head, in order."""
        sq, last = self.workload.seq_q, self.tiles - 1
        return [(q0, min(self.rows, sq - q0), n == 0, n == last) for n, q0 in enumerate(range(0, sq, self.rows))]

    def chunk_count(self, q0: int, rows: int) -> int:
        """Key chunks the tile of query rows q0 .. q0 + rows - 1 needs: all, less those entirely above a
        causal diagonal (never loaded, filtered or attended)."""
        w = self.workload
        if not w.causal:
            return self.key_chunks
        reach = q0 + rows - 1 + w.causal_shift  # the last key the tile's last row may attend to
        return 0 if reach < 0 else min(self.key_chunks, reach // self.keys + 1)

    def chunks(self, q0: int, rows: int) -> list[tuple[int, int]]:
        """(k0, keys) of each key chunk the tile needs (see :meth:`chunk_count`)."""
        sk = self.workload.seq_k
        return [(k0, min(self.keys, sk - k0)) for k0 in range(0, self.chunk_count(q0, rows) * self.keys, self.keys)]

    def all_chunks(self) -> list[tuple[int, int]]:
        """(k0, keys) of every key chunk across Sk."""
        sk = self.workload.seq_k
        return [(k0, min(self.keys, sk - k0)) for k0 in range(0, sk, self.keys)]


def plan_tiling(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> TilingPlan:
    """The :class:`TilingPlan` of ``schedule`` for ``workload`` on ``cfg``, whether or not it fits."""
    w, s = workload, schedule
    d = w.head_dim
    rows = min(s.q_tile, w.seq_q)
    row_bytes = _ceil8(w.seq_k)  # a kept bit per key in the index buffer
    sk_pad = row_bytes * 8      # the key length of a buffer row (scores, bias, a head's planes)
    keys = min(s.k_chunk, sk_pad)
    filtering = bool(w.params.rounds)
    planes = max((r.k_bits for r in w.params.rounds), default=0)
    bias = w.bias_shape4
    bias_mode = BiasMode.NONE if bias is None else (BiasMode.ROW if bias[2] == 1 else BiasMode.TILE)
    bias_rows = {BiasMode.NONE: 0, BiasMode.ROW: 1, BiasMode.TILE: rows}[bias_mode]
    if s.plane_mode == "head":
        per_head = sk_pad * d * planes // 8
        # two heads resident when they fit: the next head's planes load while this head is filtered
        kplane = BufferPlan(per_head, 2 if 2 * per_head <= cfg.buffer("kplane") else 1)
    else:
        kplane = BufferPlan(keys * d * planes // 8, CHUNK_PLANE_SLOTS)
    buffers = {
        "q": BufferPlan(rows * d * 2, s.tile_slots),
        "kplane": kplane,
        # one tile's scores of one round, chunk after chunk; recomputed scores need none
        "score": BufferPlan(rows * sk_pad * 4 if filtering and s.filter_mode == "store" else 0, 1),
        "index": BufferPlan(rows * row_bytes, s.tile_slots),
        "kv": BufferPlan(2 * keys * d * 2, s.kv_slots),
        "out": BufferPlan(rows * d * 4, s.out_slots),
        "bias": BufferPlan(bias_rows * sk_pad * 4, s.tile_slots),
        "param": BufferPlan(PARAM_BYTES_PER_HEAD, w.batch * w.heads),
    }
    return TilingPlan(
        workload=w, schedule=s, rows=rows, keys=keys, tiles=-(-w.seq_q // rows), key_chunks=-(-w.seq_k // keys),
        plane_bits=planes,
        # With a head's planes resident and no bias tile, the Filtering Unit takes a query tile's whole key
        # row in one instruction: its work is the same, the instruction count (and simulation time) is not.
        # Bias tiles are laid out chunk by chunk for the Attention Unit, so biased workloads filter by chunk.
        whole_row=filtering and s.plane_mode == "head" and bias_mode == BiasMode.NONE,
        bias_mode=bias_mode, bias_rows=bias_rows,
        buffers=MappingProxyType({name: buffers[name] for name in BUFFERS}),
    )


def buffer_usage(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> dict[str, int]:
    """Bytes each on-chip buffer must hold for this schedule (all slots included)."""
    return plan_tiling(workload, schedule, cfg).usage()


def check_workload(workload: AttentionWorkload, cfg: HardwareConfig) -> None:
    """Reject, early and by name, workloads this machine cannot take whatever the tiling."""
    w = workload
    if w.head_dim > cfg.max_head_dim:
        raise ScheduleError(f"head dim {w.head_dim} is wider than the {cfg.name} datapath "
                            f"(max_head_dim = {cfg.max_head_dim})")
    if w.head_dim % 8:
        raise ScheduleError(f"head dim {w.head_dim} is not a multiple of 8 (K bit-planes pack 8 dims a byte)")
    if w.batch * w.heads > cfg.max_heads:
        raise ScheduleError(f"{w.batch} x {w.heads} = {w.batch * w.heads} heads exceed the {cfg.max_heads} "
                            f"head slots of the {cfg.name} param buffer ({cfg.buffer('param')} bytes)")
    if w.params.view != "msb":
        raise ScheduleError(f"view rule {w.params.view!r}: the machine computes low-precision views from K's "
                            f"bit-planes, which gives the 'msb' rule only")
    if w.seq_q > 65535 or w.seq_k > 65535:
        raise ScheduleError(f"sequence lengths {w.seq_q} x {w.seq_k} exceed 65535")


def check_fits(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> None:
    """Raise :class:`ScheduleError` naming every buffer this schedule overflows."""
    check_plan(plan_tiling(workload, schedule, cfg), cfg)


def check_plan(plan: TilingPlan, cfg: HardwareConfig) -> None:
    """:func:`check_fits` of a plan already made."""
    check_workload(plan.workload, cfg)
    s = plan.schedule
    if plan.rows > cfg.max_query_tile:
        raise ScheduleError(f"query tile of {plan.rows} rows exceeds the threshold unit's {cfg.max_query_tile} "
                            f"row lanes on {cfg.name}")
    over = [f"{buf} buffer needs {need} bytes, {cfg.name} has {cfg.buffer(buf)}"
            for buf, need in plan.usage().items() if need > cfg.buffer(buf)]
    if over:
        raise ScheduleError(f"tile of {plan.rows} queries x {plan.keys} keys "
                            f"({s.tile_slots} tile slot(s), {s.kv_slots} K/V slot(s), planes per "
                            f"{s.plane_mode}, {s.filter_mode} scores) does not fit: " + "; ".join(over))


def fits(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> bool:
    try:
        check_fits(workload, schedule, cfg)
    except ScheduleError:
        return False
    return True


def default_schedule(workload: AttentionWorkload, cfg: HardwareConfig) -> Schedule:
    """Greedy heuristic: the safest tiling that fits, then grow query tile and key chunk while they fit.

    Both filter modes are grown; storing scores wins unless recomputing them allows a larger query tile
    (fewer tiles means fewer K/V gathers, and DRAM is what bounds a sparse schedule, not the FU).
    """
    check_workload(workload, cfg)
    candidates = [_grow(workload, cfg, mode) for mode in FILTER_MODES]
    fitting = [s for s in candidates if s is not None]
    if not fitting:
        check_fits(workload, Schedule(1, 8, 1, 1, 1, "chunk", "recompute"), cfg)  # raises, naming the buffers
    return max(fitting, key=lambda s: (s.q_tile, s.filter_mode == "store"))


def _grow(w: AttentionWorkload, cfg: HardwareConfig, filter_mode: str) -> Schedule | None:
    # most buffering first; give it up step by step until the smallest tiling fits
    for slots, kv_slots, out_slots, plane_mode in [(2, 2, 2, "head"), (2, 2, 2, "chunk"), (1, 2, 2, "chunk"),
                                                    (1, 1, 1, "chunk")]:
        s = Schedule(1, 8, slots, kv_slots, out_slots, plane_mode, filter_mode)
        if fits(w, s, cfg):
            break
    else:
        return None

    def grow(s: Schedule, field: str, limit: int) -> Schedule:
        while getattr(s, field) < limit:
            bigger = Schedule(**{**s.to_dict(), field: min(2 * getattr(s, field), limit)})
            if not fits(w, bigger, cfg):
                break
            s = bigger
        return s

    s = grow(s, "q_tile", min(w.seq_q, cfg.max_query_tile))
    return grow(s, "k_chunk", _ceil8(w.seq_k) * 8)


def dense_workload(workload: AttentionWorkload) -> AttentionWorkload:
    """The dense INT16 baseline of a workload: the same attention with no filter round, every candidate
    kept. Scheduled on the same machine, it is what MP-MRF's speedup is measured against."""
    from dataclasses import replace

    from ..isa.numerics import MPMRFParams

    return replace(workload, params=MPMRFParams(()))
