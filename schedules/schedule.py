"""Schedules: how one attention workload is tiled onto the machine, and whether it fits.

A :class:`Schedule` fixes the query tile, the key chunk, how many query tiles are in flight (the
run-ahead of the loader and the Filtering Unit over the Attention Unit), how many K/V chunk slots
the gather fills ahead of the Attention Unit, output buffering, and where K's bit-planes live (a
whole head resident, or streamed chunk by chunk).

:func:`plan_tiling` turns a (workload, schedule, machine) into its :class:`TilingPlan`, the one place
where tile and chunk sizes and every buffer's slots are computed: the fit check, the emitter's buffer
addresses and the tuner's features all read it. A schedule that does not fit is rejected with the
buffer, the bytes needed and the capacity. A workload with ranking rounds (top-k, Sanger: theta from
the whole row) runs only on a plan that filters whole rows (``TilingPlan.whole_row``); one that cannot
is rejected with the reason.

:func:`default_schedule` is the heuristic: of the schedules that fit, the one an analytic cost
(:mod:`.cost`: the units' work, the DRAM bytes the plan moves, and their energy) ranks first by an
objective (cycles, energy, or their product, the default).
"""

from __future__ import annotations

import functools
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
KV_MODES = ("chunk", "head")
#: query tiles in flight the heuristic and the tuner weigh, most first (the heuristic's order of equals)
TILE_SLOTS = (4, 3, 2, 1)
#: knobs a record may leave out, and the meaning it then has (records older than the knob)
KNOB_DEFAULTS = {"kv_mode": "chunk"}
CHUNK_PLANE_SLOTS = 2  # streamed K planes: chunks in flight


@dataclass(frozen=True)
class Schedule:
    q_tile: int            # query rows per tile
    k_chunk: int           # keys per chunk (a multiple of 8)
    tile_slots: int = 2    # query tiles in flight: 1 = no run-ahead, 2 = double-buffered, 3 = ...
    kv_slots: int = 2      # gathered K/V chunks in flight ("chunk" kv_mode), or heads resident at once ("head")
    out_slots: int = 2     # output tiles in flight
    plane_mode: str = "head"  # K bit-planes: "head" resident per head, or "chunk" streamed
    filter_mode: str = "store"  # "store" scores for F.SELECT, or "recompute" them (F.RESELECT)
    kv_mode: str = "chunk"  # gathered K/V: "chunk" slots refilled per query tile, or "head" resident per head

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
        if self.kv_mode not in KV_MODES:
            raise ScheduleError(f"schedule kv_mode = {self.kv_mode!r}; one of {', '.join(KV_MODES)}")

    def to_dict(self) -> dict:
        """The record; a knob at the meaning records had before it existed is left out, so those
        records, programs and their digests stay what they were."""
        return {k: v for k, v in asdict(self).items() if KNOB_DEFAULTS.get(k, ...) != v}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Schedule:
        try:
            return cls(**{k: d[k] for k in ("q_tile", "k_chunk", "tile_slots", "kv_slots", "out_slots",
                                            "plane_mode", "filter_mode", "kv_mode") if k in d})
        except (KeyError, TypeError) as err:
            raise ScheduleError(f"malformed schedule record {d!r}: {err}") from None


def _ceil8(n: int) -> int:
    return (n + 7) // 8


@dataclass(frozen=True)
class BufferPlan:
    """One on-chip buffer's share of a tiling: ``slots`` copies of ``slot_bytes`` bytes, taken in turn."""

    slot_bytes: int
    slots: int
    tail_bytes: int = 0  # after the slots: the resident bitmasks of K/V held per head (index buffer)

    @property
    def bytes(self) -> int:
        """Bytes the buffer must hold, every slot (and the tail) included."""
        return self.slot_bytes * self.slots + self.tail_bytes

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
    filter_rows: int      # rows the Filtering Unit scores at a time: the tile, or a share of it whose stored
                          # scores fit the score buffer (see plan_tiling)
    keys: int             # keys of a full chunk
    tiles: int            # query tiles per head
    key_chunks: int       # chunks across all of Sk
    plane_bits: int       # K bit-planes the filter rounds read: the widest round's k_bits (0 when dense)
    whole_row: bool       # the Filtering Unit takes a tile's whole key row in one instruction
    bias_mode: BiasMode
    bias_rows: int        # bias rows a tile slot holds: 0 (no bias), 1 (a padding row shared by all rows), rows
    score_bytes: tuple[int, ...]  # bytes of a stored score per round: 2 where INT16 holds the round's range
    buffers: Mapping[str, BufferPlan] = field(hash=False)

    @property
    def kv_resident(self) -> bool:
        """K/V held per head across its query tiles (``kv_mode`` "head"), each key gathered once."""
        return self.schedule.kv_mode == "head"

    @property
    def lead(self) -> int:
        """Tiles the loader prefetches before tile i's gather: up to tile ``i + lead - 1``. Chunk slots are
        refilled as the Attention Unit drains them, so a tile's gather ends only as its attention does:
        every free tile slot is prefetched first (``tile_slots``), or the Filtering Unit would wait on
        the gather. A resident tile's gather is one burst as soon as its filter is done, and the next
        tile's attention waits on it, so it goes before the prefetch that needs a tile slot back
        (``tile_slots - 1``)."""
        s = self.schedule
        return s.tile_slots - 1 if self.kv_resident and s.tile_slots > 1 else s.tile_slots

    def kv_chunk_addr(self, n: int, k0: int) -> int:
        """kv buffer address of the K/V tiles of the chunk at key ``k0``: in the ``n``-th chunk slot
        ("chunk" mode), or in the resident K/V of the ``n``-th head ("head" mode), whose chunks lie one
        after another, each its K tile then its V tile."""
        if not self.kv_resident:
            return self.buffers["kv"].addr(n)
        return self.buffers["kv"].addr(n, (k0 // self.keys) * 2 * self.keys * self.workload.head_dim * 2)

    @property
    def index_row_bytes(self) -> int:
        """Bytes of one query row's kept bits in the index buffer (a bit per key)."""
        return _ceil8(self.workload.seq_k)

    def resident_addr(self, n: int, k0: int) -> int:
        """index buffer address of the resident bitmask of the ``n``-th head's K/V, at key ``k0``."""
        index = self.buffers["index"]
        return index.slot_bytes * index.slots + (n % self.schedule.kv_slots) * self.index_row_bytes + k0 // 8

    @property
    def plane_slots(self) -> int:
        """K bit-plane slots: heads resident at once ("head" mode) or chunks in flight ("chunk" mode)."""
        return self.buffers["kplane"].slots

    def filter_tiles(self, rows: int) -> list[tuple[int, int]]:
        """(first row, rows) of each filter sub-tile of a tile of ``rows`` query rows: the rows the
        Filtering Unit scores and selects before the next ones reuse the score buffer."""
        return [(r0, min(self.filter_rows, rows - r0)) for r0 in range(0, rows, self.filter_rows)]

    def usage(self) -> dict[str, int]:
        """Bytes each on-chip buffer must hold (all slots included), in BUFFERS order."""
        return {name: b.bytes for name, b in self.buffers.items()}

    def bias_group_key(self, b: int, h: int, n: int) -> tuple[int, ...]:
        """What identifies the bias the ``n``-th tile of the program (batch element ``b``, head ``h``)
        reads. A per-row bias tile is the tile's own. A padding row, broadcast over queries, is shared by
        every tile of its batch element and head, and by all heads (or batch elements) where it is
        broadcast over them too: the ``[B, 1, 1, Sk]`` mask of an encoder is one row for every head.
        A bias group is a run of consecutive tiles (in program order) with the same key; the first
        of them loads the bias, into the group's slot of the bias buffer (``group % tile_slots``): the
        tiles that used that slot before end at or before the tile ``tile_slots`` back, whose attention
        frees the loading tile's slot, so nothing still read is overwritten."""
        if self.bias_mode != BiasMode.ROW:
            return (n,)
        bb, bh, _, _ = self.workload.bias_shape4
        return (b if bb > 1 else 0, h if bh > 1 else 0)

    @property
    def bias_groups(self) -> int:
        """Bias loads of the program, one per bias group (:meth:`bias_group_key`); none without a bias."""
        w = self.workload
        if self.bias_mode == BiasMode.NONE:
            return 0
        if self.bias_mode == BiasMode.TILE:
            return w.batch * w.heads * self.tiles
        bb, bh, _, _ = w.bias_shape4  # a row per head starts a run at every head, of every batch element
        return w.batch * w.heads if bh > 1 else (w.batch if bb > 1 else 1)

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


def narrow_scores(workload: AttentionWorkload, round_) -> bool:
    """Whether a filter round's scores fit INT16, so that stored scores take half the score buffer: no
    bias is added to them, and the largest low-bit product sum, D * 2**(qb-1) * 2**(kb-1), fits."""
    return (workload.bias_shape is None
            and workload.head_dim << (round_.q_bits + round_.k_bits - 2) <= 32767)


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
    kv_head = s.kv_mode == "head"
    score_bytes = tuple(2 if narrow_scores(w, r) else 4 for r in w.params.rounds)
    store = filtering and s.filter_mode == "store"
    score_row = sk_pad * max(score_bytes, default=0)  # one query row's stored scores of one round
    # shares of a tile reuse the score buffer where the planes are resident (streamed ones would stream again)
    shared = store and s.plane_mode == "head"
    filter_rows = _filter_rows(rows, score_row, cfg) if shared else rows
    if s.plane_mode == "head":
        per_head = sk_pad * d * planes // 8
        # two heads resident when they fit: the next head's planes load while this head is filtered
        kplane = BufferPlan(per_head, 2 if 2 * per_head <= cfg.buffer("kplane") else 1)
    else:
        kplane = BufferPlan(keys * d * planes // 8, CHUNK_PLANE_SLOTS)
    buffers = {
        "q": BufferPlan(rows * d * 2, s.tile_slots),
        "kplane": kplane,
        # one filter sub-tile's scores of one round, chunk after chunk; recomputed scores need none
        "score": BufferPlan(filter_rows * score_row if store else 0, 1),
        # resident K/V: a bit per key of each resident head after the tiles' kept bits
        "index": BufferPlan(rows * row_bytes, s.tile_slots, row_bytes * s.kv_slots if kv_head else 0),
        # a head's resident K/V is every chunk's K and V tiles, the last chunk padded to a full one
        "kv": BufferPlan(2 * keys * d * 2 * (-(-w.seq_k // keys) if kv_head else 1), s.kv_slots),
        "out": BufferPlan(rows * d * 4, s.out_slots),
        "bias": BufferPlan(bias_rows * sk_pad * 4, s.tile_slots),
        "param": BufferPlan(PARAM_BYTES_PER_HEAD, w.batch * w.heads),
    }
    return TilingPlan(
        workload=w, schedule=s, rows=rows, filter_rows=filter_rows, keys=keys, tiles=-(-w.seq_q // rows),
        key_chunks=-(-w.seq_k // keys),
        plane_bits=planes,
        # With a head's planes resident and no per-row bias tile, the Filtering Unit takes a query tile's
        # whole key row in one instruction: the same MACs in far fewer instructions (under a causal mask its
        # compares cover the masked chunks too). Bias is laid out chunk-major, [chunk][bias row][key]: a
        # padding row (one bias row) is then one row over all keys, loaded and read whole; per-row tiles
        # [rows, keys] are not, and filter by chunk. Ranking rounds (top-k, Sanger) need whole rows.
        whole_row=filtering and s.plane_mode == "head" and bias_rows <= 1,
        bias_mode=bias_mode, bias_rows=bias_rows, score_bytes=score_bytes,
        buffers=MappingProxyType({name: buffers[name] for name in BUFFERS}),
    )


def _filter_rows(rows: int, score_row_bytes: int, cfg: HardwareConfig) -> int:
    """Rows a tile's filter scores at a time when it stores scores (a row of ``score_row_bytes``): the
    whole tile where its scores fit the score buffer, else the tile in the fewest equal shares whose
    scores do. Each share runs every round before the next begins, so query tiles are sized for K/V
    reuse, not for the score buffer."""
    fit = cfg.buffer("score") // score_row_bytes if score_row_bytes else rows
    if fit >= rows or fit < 1:
        return rows  # fits whole, or not even one row does: check_plan names the score buffer
    shares = -(-rows // fit)
    return -(-rows // shares)


def buffer_usage(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> dict[str, int]:
    """Bytes each on-chip buffer must hold for this schedule (all slots included)."""
    return plan_tiling(workload, schedule, cfg).usage()


def ranking_rules(workload: AttentionWorkload) -> list[str]:
    """The ranking rules (top-k, Sanger) the workload's rounds use, in round order, each once."""
    return list(dict.fromkeys(r.rule for r in workload.params.rounds if r.ranking))


def _ranking_refusal(workload: AttentionWorkload, why: str) -> ScheduleError:
    rules = " and ".join(ranking_rules(workload))
    return ScheduleError(f"workload {workload.key()} has {rules} round(s), which rank a tile's whole key row in one "
                         f"select, but {why}; use policy mpmrf (MP-MRF's or the gap rule) for it")


def check_workload(workload: AttentionWorkload, cfg: HardwareConfig) -> None:
    """Reject, early and by name, workloads this machine cannot take whatever the tiling."""
    w = workload
    if ranking_rules(w) and w.bias_shape4 is not None and w.bias_shape4[2] != 1:
        raise _ranking_refusal(w, f"its bias {list(w.bias_shape)} has a row per query: per-row bias tiles are "
                                  f"laid out chunk by chunk, so no tiling filters a whole row at once")
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
    if ranking_rules(plan.workload) and not plan.whole_row:
        raise _ranking_refusal(plan.workload, f"this schedule streams K's bit-planes chunk by chunk (plane_mode "
                                              f"{s.plane_mode!r}) and so filters by chunk; with plane_mode 'head' "
                                              f"it filters whole rows")
    if plan.rows > cfg.max_query_tile:
        raise ScheduleError(f"query tile of {plan.rows} rows exceeds the threshold unit's {cfg.max_query_tile} "
                            f"row lanes on {cfg.name}")
    over = [f"{buf} buffer needs {need} bytes, {cfg.name} has {cfg.buffer(buf)}"
            for buf, need in plan.usage().items() if need > cfg.buffer(buf)]
    if over:
        raise ScheduleError(f"tile of {plan.rows} queries x {plan.keys} keys "
                            f"({s.tile_slots} tile slot(s), {s.kv_slots} K/V slot(s) per {s.kv_mode}, planes "
                            f"per {s.plane_mode}, {s.filter_mode} scores) does not fit: " + "; ".join(over))


def fits(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> bool:
    try:
        check_fits(workload, schedule, cfg)
    except ScheduleError:
        return False
    return True


def default_schedule(workload: AttentionWorkload, cfg: HardwareConfig, objective: str | None = None) -> Schedule:
    """The heuristic: of the fitting schedules of :func:`candidate_schedules`, the one the analytic cost
    of :mod:`.cost` ranks first by ``objective`` (``cycles``: estimated cycles, then DRAM bytes;
    ``energy``: estimated energy, then cycles; ``edp``, the default (``cost.DEFAULT_OBJECTIVE``): their
    product; the first in candidate order of equals)."""
    from .cost import resolve_objective

    objective = resolve_objective(objective)
    check_workload(workload, cfg)
    return _ranked_first(workload, cfg, objective)


@functools.lru_cache(maxsize=256)
def _ranked_first(workload: AttentionWorkload, cfg: HardwareConfig, objective: str) -> Schedule:
    from .cost import cost_key

    best = None
    for tiling in _tilings(workload, cfg):
        if not fits(workload, Schedule(*tiling[:2], 1, 1, 1, *tiling[2:]), cfg):
            continue  # with one slot of everything it overflows: with more it does too
        for slots in TILE_SLOTS:
            # fewer K/V or output slots save neither cycles nor energy: the most that fit stand for the rest
            for kv, out in ((2, 2), (2, 1), (1, 2), (1, 1)):
                plan = plan_tiling(workload, Schedule(*tiling[:2], slots, kv, out, *tiling[2:]), cfg)
                try:
                    check_plan(plan, cfg)
                except ScheduleError:
                    continue
                key = cost_key(plan, cfg, objective)
                if best is None or key < best[0]:
                    best = (key, plan.schedule)
                break
    if best is None:
        # the smallest schedule that may qualify: raises, naming the buffers
        smallest = Schedule(1, 8, 1, 1, 1, "head" if ranking_rules(workload) else "chunk", "recompute")
        try:
            check_fits(workload, smallest, cfg)
        except ScheduleError as err:
            if not ranking_rules(workload):
                raise
            raise _ranking_refusal(workload, f"no schedule that filters whole rows (a head's K bit-planes "
                                             f"resident) fits {cfg.name}: {err}") from None
        raise ScheduleError(f"no schedule of workload {workload.key()} fits {cfg.name}")
    return best[1]


def _tilings(w: AttentionWorkload, cfg: HardwareConfig) -> list[tuple]:
    """(q_tile, k_chunk, plane_mode, filter_mode, kv_mode) of every tiling the heuristic weighs: query
    tiles of powers of two up to what the threshold unit takes and the whole Sq, key chunks of 8 times a
    power of two and the whole key row, every mode."""
    top_q, sk8 = min(w.seq_q, cfg.max_query_tile), _ceil8(w.seq_k) * 8
    q_tiles = sorted({1 << i for i in range(top_q.bit_length()) if 1 << i <= top_q} | {top_q})
    k_chunks = sorted({8 << i for i in range(sk8.bit_length()) if 8 << i <= sk8} | {sk8})
    # resident K/V first: where the cost ties (a head in one tile), its gather goes ahead of the next prefetch
    return [(q, k, plane, filt, kv_mode) for q in q_tiles for k in k_chunks for plane in PLANE_MODES
            for filt in FILTER_MODES for kv_mode in ("head", "chunk")]


def candidate_schedules(workload: AttentionWorkload, cfg: HardwareConfig) -> list[Schedule]:
    """The schedules the heuristic weighs, fitting or not: every tiling of :func:`_tilings` with 1-4 tile
    slots and 1-2 K/V and output slots."""
    return [Schedule(q, k, slots, kv, out, plane, filt, kv_mode)
            for q, k, plane, filt, kv_mode in _tilings(workload, cfg)
            for slots in TILE_SLOTS for kv in (2, 1) for out in (2, 1)]


def dense_workload(workload: AttentionWorkload) -> AttentionWorkload:
    """The dense INT16 baseline of a workload: the same attention with no filter round, every candidate
    kept. Scheduled on the same machine, it is what MP-MRF's speedup is measured against."""
    from dataclasses import replace

    from ..isa.numerics import MPMRFParams

    return replace(workload, params=MPMRFParams(()))
