"""Scheduler: heuristic MP-MRF and dense schedules against the machine's own limits.

    python bench/scheduler.py [--config edge|server|both] [--skip-long] [--setting NAME]

For BERT-base-like (H=12, D=64, S=128/512/2048) and MiniLM-like (H=12, D=32, S=128) attention with
structured Q/K (energon_tvm.workloads), the default selection (or ``--setting``, one of the policy
sweep's settings, e.g. ``"mpmrf 0/-0.25"`` or ``"topk 0.35"``) and the heuristic's schedules
(default_schedule, at its default objective): one table per machine with each schedule's cycles
against its lower bound (energon_tvm.schedules.bounds, from the kept sets of the numpy reference on
the same data), DRAM bytes against the compulsory bytes and the tiling minimum, the speedup over
dense against what the two bounds allow, and MP-MRF's energy against dense. The dense baseline of
each comparison is the strongest the heuristic finds in that figure: the speedup is over the fastest
of its dense schedules (ranked by cycles, energy and EDP), the energy ratio over the one of least
energy; every energy also against its bound (the least energy any schedule could take). A second
table per machine has the schedules the heuristic ranks by energy. Runs are
timing-only on the reference's sparsity, which gives the cycles, DRAM bytes and energy of a full run.
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
from energon_tvm.schedules.cost import OBJECTIVES  # noqa: E402

from energon_tvm.models.compare import sweep_settings  # noqa: E402
from energon_tvm.tuner import profile_from_arrays  # noqa: E402
from energon_tvm.workloads import structured_qkv  # noqa: E402

WORKLOADS = [("MiniLM", 12, 128, 32), ("BERT-base", 12, 128, 64), ("BERT-base", 12, 512, 64),
             ("BERT-base", 12, 2048, 64)]


class Runs:
    """Timing-only runs of one workload's schedules on the reference's sparsity, each schedule run once."""

    def __init__(self, w, cfg, q, k, v):
        self.w, self.cfg = w, cfg
        self.profile = profile_from_arrays(w, q, k, v)
        self.bound = call_bound(w, cfg, self.profile)
        self._stats = {}

    def run(self, objective: str | None = None):
        """(schedule, stats) of the heuristic's schedule ranked by ``objective`` (None: its default)."""
        schedule = default_schedule(self.w, self.cfg, objective)
        if schedule not in self._stats:
            program = emit_program(self.w, schedule, self.cfg)
            self._stats[schedule] = Simulator(self.cfg).run(program, profile=self.profile).stats
        return schedule, self._stats[schedule]

    def strongest(self, figure) -> dict:
        """The stats of the heuristic's schedule (of every objective's) with the least ``figure``."""
        return min((self.run(o)[1] for o in OBJECTIVES), key=figure)


def energy(stats) -> float:
    return stats["energy_pj"]["total"]


def cycles(stats) -> int:
    return stats["cycles"]


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
        rows, energy_rows = [], []
        for model, h, s, d in WORKLOADS:
            if args.skip_long and s > 1024:
                continue
            t0 = time.perf_counter()
            q, k, v = structured_qkv(np.random.default_rng(0), 1, h, s, s, d)
            w = AttentionWorkload(1, h, s, s, d, params=params)
            sparse, dense = Runs(w, cfg, q, k, v), Runs(dense_workload(w), cfg, q, k, v)
            (sched, st), (dsched, dst) = sparse.run(), dense.run()
            bound, dbound = sparse.bound, dense.bound
            fastest, least = dense.strongest(cycles), dense.strongest(energy)
            speedup, allowed = cycles(fastest) / st["cycles"], dbound.cycles / bound.cycles
            workload = f"{model} S={s} D={d}"
            rows.append([
                workload, f"{st['kept_ratio'][-1]:.3f}",
                short(sched), f"{st['cycles']:,}", f"{bound.cycles:,}",
                f"{bound.ratio(st['cycles']):.2f}x ({bound.binds})",
                short(dsched).replace("store, ", ""), f"{dst['cycles']:,}", f"{dbound.cycles:,}",
                f"{dbound.ratio(dst['cycles']):.2f}x ({dbound.binds})",
                f"{dram(st) / 1e6:.2f}", f"{dram(st) / bound.compulsory_dram_bytes:.2f}x",
                f"{dram(st) / bound.tiling_min_dram_bytes:.2f}x",
                f"{dram(dst) / dbound.tiling_min_dram_bytes:.2f}x", f"{cycles(fastest):,}",
                f"{speedup:.2f}x", f"{allowed:.2f}x", f"{speedup / allowed:.0%}",
                f"{bound.energy_ratio(energy(st)):.2f}x", f"{dbound.energy_ratio(energy(dst)):.2f}x",
                f"{energy(st) / energy(least):.2f}",
                f"{time.perf_counter() - t0:.0f}",
            ])
            (esched, est), (edsched, edst) = sparse.run("energy"), dense.run("energy")
            energy_rows.append([
                workload, short(esched), f"{est['cycles']:,}", f"{bound.ratio(est['cycles']):.2f}x",
                f"{dram(est) / bound.tiling_min_dram_bytes:.2f}x", f"{energy(est) / 1e6:,.1f}",
                f"{bound.energy_ratio(energy(est)):.2f}x",
                short(edsched).replace("store, ", ""), f"{edst['cycles']:,}",
                f"{dbound.ratio(edst['cycles']):.2f}x", f"{dram(edst) / dbound.tiling_min_dram_bytes:.2f}x",
                f"{energy(edst) / 1e6:,.1f}", f"{dbound.energy_ratio(energy(edst)):.2f}x",
                f"{cycles(fastest) / est['cycles']:.2f}x",
                f"{energy(est) / energy(least):.2f}", f"{energy(est) / energy(st):.2f}",
            ])
        print(table(["workload (H=12)", "kept", "MP-MRF schedule", "MP-MRF cycles", "bound", "x bound",
                     "dense schedule", "dense cycles", "bound", "x bound", "MP-MRF DRAM MB", "x compulsory",
                     "x tiling min", "dense DRAM x tiling min", "fastest dense cycles", "speedup",
                     "bound allows", "of allowed", "MP-MRF x energy bound", "dense x energy bound",
                     "energy vs dense", "wall s"], rows,
                    f"Heuristic schedules on {name}, {params.describe()}"))
        print(table(["workload (H=12)", "MP-MRF schedule", "cycles", "x bound", "DRAM x tiling min", "uJ",
                     "x energy bound", "dense schedule", "cycles", "x bound", "DRAM x tiling min", "uJ",
                     "x energy bound", "speedup",
                     "energy vs dense", "energy vs MP-MRF's default"], energy_rows,
                    f"Ranked by energy on {name}, {params.describe()}"))

if __name__ == "__main__":
    main()
