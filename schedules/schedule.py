"""Schedules: how one attention workload is tiled onto the machine, and whether it fits.

A :class:`Schedule` fixes the query tile, the key chunk, how many query tiles are in flight (the
run-ahead of the loader and the Filtering Unit over the Attention Unit), how many K/V chunk slots
the gather fills ahead of the Attention Unit, output buffering, and where K's bit-planes live (a
whole head resident, or streamed chunk by chunk). Every buffer's use is computed here, in one place,
and a schedule that does not fit is rejected with the buffer, the bytes needed and the capacity.

:func:`default_schedule` is the heuristic: start from the smallest safe tiling, then grow the query
tile and the key chunk greedily while everything still fits (as Gemmini's ``tiled_matmul_auto``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..isa.config import PARAM_BYTES_PER_HEAD, HardwareConfig
from ..isa.errors import ScheduleError
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


def plane_bits(workload: AttentionWorkload) -> int:
    """K bit-planes the filter rounds need (the widest round's k_bits; 0 for the dense baseline)."""
    return max((r.k_bits for r in workload.params.rounds), default=0)


def chunk_keys(workload: AttentionWorkload, schedule: Schedule) -> int:
    """Keys in the widest chunk: the chunk size, capped at Sk rounded up to 8."""
    return min(schedule.k_chunk, _ceil8(workload.seq_k) * 8)


def buffer_usage(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> dict[str, int]:
    """Bytes each on-chip buffer must hold for this schedule (all slots included)."""
    w, s = workload, schedule
    d, sk = w.head_dim, w.seq_k
    rows = min(s.q_tile, w.seq_q)
    keys = chunk_keys(w, s)
    sk_pad = _ceil8(sk) * 8
    filtering = bool(w.params.rounds)
    bias = w.bias_shape4
    bias_rows = 0 if bias is None else (1 if bias[2] == 1 else rows)
    planes = plane_bits(w)
    if s.plane_mode == "head":
        kplane = head_plane_slots(w, cfg) * sk_pad * d * planes // 8
    else:
        kplane = CHUNK_PLANE_SLOTS * keys * d * planes // 8
    return {
        "q": s.tile_slots * rows * d * 2,
        "kplane": kplane,
        "score": rows * sk_pad * 4 if filtering and s.filter_mode == "store" else 0,
        "index": s.tile_slots * rows * _ceil8(sk),
        "kv": s.kv_slots * 2 * keys * d * 2,
        "out": s.out_slots * rows * d * 4,
        "bias": s.tile_slots * bias_rows * sk_pad * 4,
        "param": w.batch * w.heads * PARAM_BYTES_PER_HEAD,
    }


def head_plane_slots(workload: AttentionWorkload, cfg: HardwareConfig) -> int:
    """Heads whose K planes the kplane buffer holds at once in "head" mode (2 = double-buffered)."""
    per_head = _ceil8(workload.seq_k) * 8 * workload.head_dim * plane_bits(workload) // 8
    return 2 if 2 * per_head <= cfg.buffer("kplane") else 1


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
    check_workload(workload, cfg)
    rows = min(schedule.q_tile, workload.seq_q)
    if rows > cfg.max_query_tile:
        raise ScheduleError(f"query tile of {rows} rows exceeds the threshold unit's {cfg.max_query_tile} "
                            f"row lanes on {cfg.name}")
    over = [f"{buf} buffer needs {need} bytes, {cfg.name} has {cfg.buffer(buf)}"
            for buf, need in buffer_usage(workload, schedule, cfg).items() if need > cfg.buffer(buf)]
    if over:
        raise ScheduleError(f"tile of {rows} queries x {chunk_keys(workload, schedule)} keys "
                            f"({schedule.tile_slots} tile slot(s), {schedule.kv_slots} K/V slot(s), planes per "
                            f"{schedule.plane_mode}, {schedule.filter_mode} scores) does not fit: " + "; ".join(over))


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
