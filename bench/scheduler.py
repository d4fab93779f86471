"""Scheduler: heuristic MP-MRF and dense schedules against the machine's own limits.

    python bench/scheduler.py [--config edge|server|both] [--skip-long] [--setting NAME]

For BERT-base-like (H=12, D=64, S=128/512/2048) and MiniLM-like (H=12, D=32, S=128) attention with
structured Q/K (energon_tvm.workloads), the default selection (or ``--setting``, one of the policy
sweep's settings, e.g. ``"mpmrf 0/-0.25"`` or ``"topk 0.35"``) and the heuristic's schedules
(default_schedule): one table per machine with each schedule's cycles against its lower bound
(energon_tvm.schedules.bounds, from the kept sets of the numpy reference on the same data), MP-MRF's
DRAM bytes against the compulsory bytes and the tiling minimum, the speedup over dense against what
the two bounds allow, and MP-MRF's energy against dense. Runs are timing-only on the reference's
sparsity, which gives the cycles, DRAM bytes and energy of a full run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402
from energon_tvm.isa.config import load_config  # noqa: E402
from energon_tvm.isa.numerics import MPMRFParams  # noqa: E402
from energon_tvm.runtime_sim import Simulator  # noqa: E402
from energon_tvm.schedules import (  # noqa: E402
    AttentionWorkload,
    call_bound,
    default_schedule,
    dense_workload,
    emit_program,
)

from energon_tvm.models.compare import sweep_settings  # noqa: E402
from energon_tvm.tuner import profile_from_arrays  # noqa: E402
from energon_tvm.workloads import structured_qkv  # noqa: E402

WORKLOADS = [("MiniLM", 12, 128, 32), ("BERT-base", 12, 128, 64), ("BERT-base", 12, 512, 64),
             ("BERT-base", 12, 2048, 64)]


def simulate(w, cfg, q, k, v):
    """(schedule, stats, bound) of the heuristic schedule of ``w`` on the reference's sparsity."""
    profile = profile_from_arrays(w, q, k, v)
    schedule = default_schedule(w, cfg)
    stats = Simulator(cfg).run(emit_program(w, schedule, cfg), profile=profile).stats
    return schedule, stats, call_bound(w, cfg, profile)


def short(s) -> str:
    """q x k, filter mode (MP-MRF only), where planes and K/V live, tile slots."""
    return f"{s.q_tile}x{s.k_chunk} {s.filter_mode}, planes/{s.plane_mode}, K/V/{s.kv_mode}, t{s.tile_slots}"


def dram(stats) -> int:
    return stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="both", choices=["edge", "server", "both"])
    ap.add_argument("--skip-long", action="store_true", help="leave out S=2048")
    ap.add_argument("--setting", help="a setting of energon_tvm.models.compare.POLICY_SWEEP (default: the "
                    "default MP-MRF parameters)")
    args = ap.parse_args()
    params = MPMRFParams()
    if args.setting is not None:
        settings = sweep_settings()
        if args.setting not in settings:
            ap.error(f"--setting {args.setting!r}: one of {', '.join(settings)}")
        params = settings[args.setting]
    configs = ["edge", "server"] if args.config == "both" else [args.config]
    for name in configs:
        cfg = load_config(name)
        rows = []
        for model, h, s, d in WORKLOADS:
            if args.skip_long and s > 1024:
                continue
            t0 = time.perf_counter()
            q, k, v = structured_qkv(np.random.default_rng(0), 1, h, s, s, d)
            w = AttentionWorkload(1, h, s, s, d, params=params)
            sched, st, bound = simulate(w, cfg, q, k, v)
            dsched, dst, dbound = simulate(dense_workload(w), cfg, q, k, v)
            speedup, allowed = dst["cycles"] / st["cycles"], dbound.cycles / bound.cycles
            rows.append([
                f"{model} S={s} D={d}", f"{st['kept_ratio'][-1]:.3f}",
                short(sched), f"{st['cycles']:,}", f"{bound.cycles:,}",
                f"{bound.ratio(st['cycles']):.2f}x ({bound.binds})",
                short(dsched).replace("store, ", ""), f"{dst['cycles']:,}", f"{dbound.cycles:,}",
                f"{dbound.ratio(dst['cycles']):.2f}x ({dbound.binds})",
                f"{dram(st) / 1e6:.2f}", f"{dram(st) / bound.compulsory_dram_bytes:.2f}x",
                f"{dram(st) / bound.tiling_min_dram_bytes:.2f}x",
                f"{dram(dst) / dbound.tiling_min_dram_bytes:.2f}x",
                f"{speedup:.2f}x", f"{allowed:.2f}x", f"{speedup / allowed:.0%}",
                f"{st['energy_pj']['total'] / dst['energy_pj']['total']:.2f}",
                f"{time.perf_counter() - t0:.0f}",
            ])
        print(table(["workload (H=12)", "kept", "MP-MRF schedule", "MP-MRF cycles", "bound", "x bound",
                     "dense schedule", "dense cycles", "bound", "x bound", "MP-MRF DRAM MB", "x compulsory",
                     "x tiling min", "dense DRAM x tiling min", "speedup", "bound allows", "of allowed",
                     "energy vs dense", "wall s"], rows, f"Heuristic schedules on {name}, {params.describe()}"))


if __name__ == "__main__":
    main()
