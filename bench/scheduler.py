"""Scheduler: MP-MRF schedules against the dense baseline on the same machine.

    python bench/scheduler.py [--config edge|server|both] [--skip-long]

For BERT-base-like (H=12, D=64, S=128/512/2048) and MiniLM-like (H=12, D=32, S=128) attention with
structured Q/K (energon_tvm.workloads), default MP-MRF parameters, heuristic schedules: simulated
cycles, FU / AU / DRAM utilisation, speedup over the dense INT16 schedule, that speedup as a
fraction of the ideal 1 / kept-ratio, and each schedule's cycles against the lower bound of any schedule
on the machine (energon_tvm.schedules.bounds, from the kept sets the run produced).
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
from energon_tvm.runtime_sim import run_attention  # noqa: E402
from energon_tvm.schedules import (  # noqa: E402
    AttentionWorkload,
    call_bound,
    default_schedule,
    dense_workload,
    emit_program,
)
from energon_tvm.schedules.graph import critical_path  # noqa: E402

from energon_tvm.workloads import structured_qkv  # noqa: E402

WORKLOADS = [("MiniLM", 12, 128, 32), ("BERT-base", 12, 128, 64), ("BERT-base", 12, 512, 64),
             ("BERT-base", 12, 2048, 64)]


def simulate(w, cfg, q, k, v):
    prog = emit_program(w, default_schedule(w, cfg), cfg)
    _, res = run_attention(prog, cfg, q, k, v, trace=True, capture=True)
    bound = call_bound(w, cfg, [res.captured[r] for r in range(1 + len(w.params.rounds))])
    return prog, res, critical_path(prog, res.events), bound


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="both", choices=["edge", "server", "both"])
    ap.add_argument("--skip-long", action="store_true", help="leave out S=2048")
    args = ap.parse_args()
    configs = ["edge", "server"] if args.config == "both" else [args.config]
    for name in configs:
        cfg = load_config(name)
        rows = []
        for model, h, s, d in WORKLOADS:
            if args.skip_long and s > 1024:
                continue
            t0 = time.perf_counter()
            q, k, v = structured_qkv(np.random.default_rng(0), 1, h, s, s, d)
            w = AttentionWorkload(1, h, s, s, d)
            prog, res, path, bound = simulate(w, cfg, q, k, v)
            _, dres, dpath, dbound = simulate(dense_workload(w), cfg, q, k, v)
            st, sched = res.stats, prog.meta["schedule"]
            kept = st["kept_ratio"][-1]
            speedup = dres.cycles / res.cycles
            rows.append([
                f"{model} S={s} D={d}",
                f"{sched['q_tile']}x{sched['k_chunk']} {sched['filter_mode']}/{sched['plane_mode']}",
                st["cycles"], dres.cycles, bound.cycles, f"{bound.ratio(st['cycles']):.2f}x ({bound.binds})",
                dbound.cycles, f"{dbound.ratio(dres.cycles):.2f}x ({dbound.binds})",
                f"{st['units']['filter']['utilization']:.0%}", f"{st['units']['attend']['utilization']:.0%}",
                f"{st['dram_utilization']:.0%}", f"{kept:.3f}", f"{speedup:.2f}x", f"{speedup * kept:.0%}",
                f"{path.bound_by} / {dpath.bound_by}",
                f"{st['energy_pj']['total'] / dres.stats['energy_pj']['total']:.2f}",
                f"{time.perf_counter() - t0:.0f}",
            ])
        print(table(["workload (H=12)", "schedule", "MP-MRF cycles", "dense cycles", "MP-MRF bound",
                     "MP-MRF x bound", "dense bound", "dense x bound", "FU util", "AU util",
                     "DRAM util", "kept ratio", "speedup", "of ideal 1/kept", "bound by (MP-MRF / dense)",
                     "energy vs dense", "wall s"], rows, f"Heuristic schedules on {name}"))


if __name__ == "__main__":
    main()
