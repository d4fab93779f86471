"""The search space: every schedule of one workload that fits the machine, in a fixed grid order.

The knobs are the scheduler's own (:class:`~energon_tvm.schedules.schedule.Schedule`): the query tile
(powers of two below Sq, and Sq itself), the key chunk (multiples of 8 up to Sk), the run-ahead depth
``tile_slots`` (query tiles in flight), K/V and output buffering, where K's bit-planes live
(``plane_mode``: resident per head or streamed per chunk, i.e. the loop order of plane fetches), and
whether the filter keeps its scores or recomputes them (``filter_mode``), and whether gathered K/V
stay resident across a head's query tiles (``kv_mode``). A
point is in the space only if :func:`~energon_tvm.schedules.schedule.fits` accepts it, so every point
is valid by construction, and only if its program stays under a measurement budget (see
:func:`program_size`): those left out are tiny-tile schedules whose instruction overhead makes them
many times slower than the heuristic, and whose simulation alone would take minutes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..isa.config import HardwareConfig
from ..isa.errors import ScheduleError
from ..schedules.emit import ProgramCounter, count_instructions
from ..schedules.schedule import (
    FILTER_MODES,
    KV_MODES,
    PLANE_MODES,
    TILE_SLOTS,
    Schedule,
    check_plan,
    check_workload,
    default_schedule,
    plan_tiling,
)
from ..schedules.workload import AttentionWorkload
from .errors import TuningError

KNOBS = ("q_tile", "k_chunk", "tile_slots", "kv_slots", "out_slots", "plane_mode", "filter_mode", "kv_mode")

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
        "tile_slots": tuple(sorted(TILE_SLOTS)),
        "kv_slots": (1, 2),
        "out_slots": (1, 2),
        "plane_mode": PLANE_MODES,
        "filter_mode": FILTER_MODES,
        "kv_mode": KV_MODES,
    }


def program_size(workload: AttentionWorkload, schedule: Schedule, cfg: HardwareConfig) -> int:
    """Instructions :func:`~energon_tvm.schedules.emit.emit_program` produces, counted by the emitter
    itself without building the program (:func:`~energon_tvm.schedules.emit.count_instructions`), so
    that the budget can be applied to thousands of points in seconds: emitting a 1M-instruction program
    takes ~10 s."""
    return count_instructions(plan_tiling(workload, schedule, cfg), cfg)


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
        counter = ProgramCounter(workload, cfg)
        for combo in itertools.product(*(grid[k] for k in KNOBS)):
            plan = plan_tiling(workload, Schedule(**dict(zip(KNOBS, combo))), cfg)
            try:
                check_plan(plan, cfg)
            except ScheduleError:
                unfit += 1
                continue
            size = counter.count(plan, limit=max_instructions)  # exact within the budget
            if size > max_instructions:
                over += 1
            else:
                points.append(plan.schedule)
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

    def heuristic(self, objective: str | None = None) -> Schedule:
        """The heuristic's schedule (:func:`default_schedule`) ranked by ``objective`` (the heuristic's
        default when None); it may lie outside the space."""
        return default_schedule(self.workload, self.cfg, objective)
