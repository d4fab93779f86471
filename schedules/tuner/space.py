"""The search space: every schedule of one workload that fits the machine, in a fixed grid order.

The knobs are the scheduler's own (:class:`~energon_tvm.schedules.schedule.Schedule`): the query tile
(powers of two below Sq, and Sq itself), the key chunk (multiples of 8 up to Sk), the run-ahead depth
``tile_slots`` (query tiles in flight), K/V and output buffering, where K's bit-planes live
(``plane_mode``: resident per head or streamed per chunk, i.e. the loop order of plane fetches), and
whether the filter keeps its scores or recomputes them (``filter_mode``). A
point is in the space only if :func:`~energon_tvm.schedules.schedule.fits` accepts it, so every point
is valid by construction, and only if its program stays under a measurement budget (see
:func:`program_size`): those left out are tiny-tile schedules whose instruction overhead makes them
many times slower than the heuristic, and whose simulation alone would take minutes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ...isa.config import HardwareConfig
from ..schedule import (
    CHUNK_PLANE_SLOTS,
    FILTER_MODES,
    PLANE_MODES,
    Schedule,
    check_workload,
    chunk_keys,
    default_schedule,
    fits,
    head_plane_slots,
)
from ..workload import AttentionWorkload
from .errors import TuningError

KNOBS = ("q_tile", "k_chunk", "tile_slots", "kv_slots", "out_slots", "plane_mode", "filter_mode")

#: Default measurement budget, in instructions. The timing-only simulator takes ~40 us per
#: instruction on one core, so this caps one measurement at roughly 8 s.
DEFAULT_MAX_INSTRUCTIONS = 200_000


def default_knobs(workload: AttentionWorkload) -> dict[str, tuple]:
    """The values each knob ranges over for ``workload`` (before the fit and budget filters)."""
    sq, sk8 = workload.seq_q, -(-workload.seq_k // 8) * 8
    q_tiles = sorted({1 << i for i in range(sq.bit_length()) if 1 << i < sq} | {sq})
    return {
        "q_tile": tuple(q_tiles),
        "k_chunk": tuple(range(8, sk8 + 1, 8)),
        "tile_slots": (1, 2, 3),
        "kv_slots": (1, 2),
        "out_slots": (1, 2),
        "plane_mode": PLANE_MODES,
        "filter_mode": FILTER_MODES,
    }


def _tile_chunks(w: AttentionWorkload, rows: int, keys: int) -> list[tuple[int, bool, bool]]:
    """(chunks, first_of_head, last_of_head) of each query tile of one head, as the emitter tiles it."""
    starts = list(range(0, w.seq_q, rows))
    out = []
    for n, q0 in enumerate(starts):
        last_q = q0 + min(rows, w.seq_q - q0) - 1
        chunks = 0
        for k0 in range(0, w.seq_k, keys):
            if w.causal and k0 > last_q + w.causal_shift:
                break  # chunks above the causal diagonal are never emitted
            chunks += 1
        out.append((chunks, n == 0, n == len(starts) - 1))
    return out


def program_size(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> int:
    """Instructions :func:`~energon_tvm.schedules.emit.emit_program` produces, counted without emitting.

    Mirrors the emitter's loops (``tests/tuner`` checks the two agree exactly) so that the budget can
    be applied to thousands of points in milliseconds: emitting a 1M-instruction program takes ~10 s.
    """
    w, s = workload, schedule
    rows, keys = min(s.q_tile, w.seq_q), chunk_keys(w, s)
    rounds = len(w.params.rounds)
    head_mode = rounds > 0 and s.plane_mode == "head"
    chunk_mode = rounds > 0 and s.plane_mode == "chunk"
    recompute = s.filter_mode == "recompute"  # pass 2 rescores: it streams the planes a second time
    # resident planes and no bias tile: the filter takes a tile's whole key row per instruction
    whole_row = head_mode and w.bias_shape is None
    all_chunks = -(-w.seq_k // keys)
    plane_fetches, lo = 0, 0
    for r in w.params.rounds:  # each round fetches only the planes the previous ones did not
        if r.k_bits > lo:
            plane_fetches, lo = plane_fetches + 1, r.k_bits
    bias_loads = w.bias_shape is not None
    per_head = 0
    for chunks, first, last in _tile_chunks(w, rows, keys):
        prefetch = 3 + (chunks if bias_loads else 0)
        prefetch += (2 + plane_fetches * (1 if whole_row else all_chunks)) if head_mode and first else 0
        prefetch += 3 * rounds * chunks * (2 if recompute else 1) if chunk_mode else 0
        fchunks = 1 if whole_row else chunks
        score = rounds * fchunks * (3 if chunk_mode else 1)  # chunk mode: wait and free each chunk's planes
        filt = 4 + fchunks + score + (score if recompute else rounds * fchunks)
        filt += (1 if head_mode and first else 0) + (1 if head_mode and last else 0)
        gather = 1 + 3 * chunks
        attend = 7 + 3 * chunks
        store = 3
        per_head += prefetch + filt + gather + attend + store
    plane_slots = (head_plane_slots(w, cfg) if s.plane_mode == "head" else CHUNK_PLANE_SLOTS) if rounds else 0
    fixed = 5 + 1 + 2 * s.tile_slots + s.kv_slots + s.out_slots + plane_slots + 1  # header, credits, HALT
    return fixed + w.batch * w.heads * per_head


@dataclass(frozen=True)
class SearchSpace:
    """The valid, measurable schedules of ``workload`` on ``cfg``, in grid order (knobs in
    :data:`KNOBS` order, the last varying fastest; numbers ascending, modes in their listed order)."""

    workload: AttentionWorkload
    cfg: HardwareConfig
    points: tuple[Schedule, ...]
    sizes: tuple[int, ...]   # program_size of each point, for features and the budget
    knobs: Mapping[str, tuple]
    max_instructions: int
    over_budget: int   # points that fit but whose programs exceed max_instructions
    unfit: int         # grid points that overflow a buffer or the threshold unit

    @classmethod
    def build(cls, workload: AttentionWorkload, cfg: HardwareConfig, *,
              knobs: Mapping[str, Sequence] | None = None,
              max_instructions: int = DEFAULT_MAX_INSTRUCTIONS) -> SearchSpace:
        """Enumerate the grid of ``knobs`` (default :func:`default_knobs`; a partial mapping overrides
        only the knobs it names) and keep the points that fit and stay within the budget."""
        if not isinstance(max_instructions, int) or max_instructions < 1:
            raise TuningError(f"max_instructions = {max_instructions!r} must be a positive integer")
        check_workload(workload, cfg)  # a workload no tiling can take: say why, not "no point fits"
        grid = dict(default_knobs(workload))
        for name, values in (knobs or {}).items():
            if name not in grid:
                raise TuningError(f"unknown schedule knob {name!r}; knobs are {', '.join(KNOBS)}")
            if not values:
                raise TuningError(f"knob {name!r} has no values")
            values = tuple(dict.fromkeys(values))  # dedupe, keeping the caller's order of names
            grid[name] = values if isinstance(values[0], str) else tuple(sorted(values))
        points, sizes, unfit, over = [], [], 0, 0
        for combo in itertools.product(*(grid[k] for k in KNOBS)):
            s = Schedule(**dict(zip(KNOBS, combo)))
            if not fits(workload, s, cfg):
                unfit += 1
                continue
            size = program_size(workload, s, cfg)
            if size > max_instructions:
                over += 1
            else:
                points.append(s)
                sizes.append(size)
        if not points:
            raise TuningError(f"no schedule of {workload.key()} fits {cfg.name} within "
                              f"{max_instructions} instructions ({unfit} overflow a buffer, {over} exceed "
                              f"the budget); raise max_instructions or change the knobs")
        return cls(workload, cfg, tuple(points), tuple(sizes), grid, max_instructions, over, unfit)

    def __len__(self) -> int:
        return len(self.points)

    def __iter__(self) -> Iterator[Schedule]:
        return iter(self.points)

    def __getitem__(self, i: int) -> Schedule:
        return self.points[i]

    def index(self, schedule: Schedule) -> int | None:
        """Position of ``schedule`` in the space, or None when it is not a point of it."""
        return self._index.get(schedule)

    @property
    def _index(self) -> dict[Schedule, int]:
        cache = self.__dict__.get("_index_cache")
        if cache is None:
            cache = {s: i for i, s in enumerate(self.points)}
            object.__setattr__(self, "_index_cache", cache)
        return cache

    def heuristic(self) -> Schedule:
        """The greedy heuristic's schedule (:func:`default_schedule`); it may lie outside the space."""
        return default_schedule(self.workload, self.cfg)
