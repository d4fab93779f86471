"""Schedule features: the numbers the cost model learns cycles from.

A point's features are its knobs (log2 of the sizes, the slot counts, the three modes as 0/1) plus what
they imply for this workload on this machine: tiles and chunks, the padding wasted by ragged last
tiles, the program's instruction count (per-instruction overhead and DMA latency), and how full each
on-chip buffer is. The same vector for the same (workload, schedule, config) always, so the model
trained in one session is reproducible from its records.
"""

from __future__ import annotations

import math

import numpy as np

from ..isa.config import BUFFERS
from ..schedules.schedule import plan_tiling
from .space import SearchSpace

FEATURE_NAMES: tuple[str, ...] = (
    "log2_q_tile", "log2_k_chunk", "tile_slots", "kv_slots", "out_slots", "plane_chunk", "filter_recompute",
    "kv_resident",
    "log2_rows", "log2_keys", "log2_tiles", "log2_chunks", "row_waste", "key_waste", "log2_instructions",
) + tuple(f"fill_{b}" for b in BUFFERS)


def schedule_features(space: SearchSpace) -> np.ndarray:
    """float64 [len(space), len(FEATURE_NAMES)]: one row per point, in the space's order."""
    w, cfg = space.workload, space.cfg
    caps = [cfg.buffer(b) for b in BUFFERS]
    rows_out = []
    for s, size in zip(space.points, space.sizes):
        plan = plan_tiling(w, s, cfg)
        rows, keys, tiles, chunks = plan.rows, plan.keys, plan.tiles, plan.key_chunks
        usage = plan.usage()
        rows_out.append([
            math.log2(s.q_tile), math.log2(s.k_chunk), s.tile_slots, s.kv_slots, s.out_slots,
            float(s.plane_mode == "chunk"), float(s.filter_mode == "recompute"), float(s.kv_mode == "head"),
            math.log2(rows), math.log2(keys), math.log2(tiles), math.log2(chunks),
            tiles * rows / w.seq_q - 1.0, chunks * keys / w.seq_k - 1.0, math.log2(size),
            *(usage[b] / cap for b, cap in zip(BUFFERS, caps)),
        ])
    return np.asarray(rows_out, dtype=np.float64).reshape(len(space.points), len(FEATURE_NAMES))
