"""Instruction-level simulator: wall time against the numpy reference, simulated cycles and energy,
and the simulated latency next to dense float attention measured on this machine's CPU.

    python bench/simulator.py [--config edge] [--seq 512] [--heads 12] [--head-dim 64] [--repeat 5]

Workload: B=1, H=12, S=512, D=64, structured Q/K (energon_tvm.workloads), default MP-MRF (Q4xK2,
Q4xK4; default alphas), the heuristic schedule. Simulator and reference are timed in interleaved rounds
(see common.timed); the simulated output is checked against the reference's before anything is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, timed  # noqa: E402
from energon_tvm.isa.config import load_config  # noqa: E402
from energon_tvm.runtime_sim import Simulator, layout_inputs, read_output  # noqa: E402
from energon_tvm.schedules import AttentionWorkload, default_schedule, dense_workload, emit_program  # noqa: E402

from energon_tvm.mpmrf import float_attention, mpmrf_attention  # noqa: E402
from energon_tvm.workloads import structured_qkv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="edge")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cfg = load_config(args.config)
    s, h, d = args.seq, args.heads, args.head_dim
    w = AttentionWorkload(1, h, s, s, d)
    q, k, v = structured_qkv(np.random.default_rng(0), 1, h, s, s, d)

    prog = emit_program(w, default_schedule(w, cfg), cfg)
    image = layout_inputs(prog, q, k, v)
    sim = Simulator(cfg)
    t = timed({"sim": lambda: sim.run(prog, image), "ref": lambda: mpmrf_attention(q, k, v, None, w.params),
               "float": lambda: float_attention(q, k, v)}, args.repeat)
    result, ref = t["sim"].result, t["ref"].result
    out = read_output(prog, result)
    np.testing.assert_allclose(out, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())

    dense = dense_workload(w)
    dprog = emit_program(dense, default_schedule(dense, cfg), cfg)
    dres = sim.run(dprog, layout_inputs(dprog, q, k, v))
    st, ds = result.stats, dres.stats

    shape = f"B=1 H={h} S={s} D={d}"
    sim_t, ref_t = t["sim"], t["ref"]
    print(table(["", "best ms", "median ms", "best vs reference", "median vs reference"], [
        ["numpy MP-MRF reference", f"{ref_t.best * 1e3:.0f}", f"{ref_t.median * 1e3:.0f}", "1.00x", "1.00x"],
        [f"simulator, full mode ({st['instructions']} instructions)", f"{sim_t.best * 1e3:.0f}",
         f"{sim_t.median * 1e3:.0f}", f"{sim_t.best / ref_t.best:.2f}x", f"{sim_t.median / ref_t.median:.2f}x"],
    ], f"Simulator wall time, {shape}, {args.repeat} interleaved rounds (target: at most 2x the reference)"))
    print(table(["schedule", "cycles", f"latency us @ {cfg.clock_ghz:g} GHz", "energy uJ", "DRAM MB",
                 "kept ratio"], [
        ["MP-MRF (heuristic)", st["cycles"], f"{st['time_us']:.1f}", f"{st['energy_pj']['total'] / 1e6:.2f}",
         f"{(st['dram_bytes']['read_total'] + st['dram_bytes']['write_total']) / 1e6:.2f}",
         " / ".join(f"{r:.3f}" for r in st["kept_ratio"])],
        ["dense INT16 baseline", ds["cycles"], f"{ds['time_us']:.1f}", f"{ds['energy_pj']['total'] / 1e6:.2f}",
         f"{(ds['dram_bytes']['read_total'] + ds['dram_bytes']['write_total']) / 1e6:.2f}", "1"],
    ], f"Simulated on {cfg.name}, {shape}"))
    print(table(["", "us"], [
        [f"Energon {cfg.name}, simulated latency (MP-MRF)", f"{st['time_us']:.1f}"],
        [f"Energon {cfg.name}, simulated latency (dense INT16)", f"{ds['time_us']:.1f}"],
        ["this machine's CPU, dense float attention (numpy float64, measured)", f"{t['float'].best * 1e6:.0f}"],
    ], "Latency against the host CPU"))
    e = st["energy_pj"]
    print(table(["component", "uJ", "share"], [[k, f"{v / 1e6:.3f}", f"{v / e['total']:.1%}"]
                                               for k, v in e.items() if k != "total" and v > 0],
                "Energy by component (MP-MRF)"))


if __name__ == "__main__":
    main()
