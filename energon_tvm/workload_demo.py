"""The main job on the default workload, as far as the stack goes without a model file.

Compiles MiniLM-like attention (B=1, H=12, S=128, D=32, a padding mask) for the Energon ``edge``
machine with the default MP-MRF parameters, runs it on the instruction-level simulator, checks the
output against the numpy reference, and prints kept ratios, cycles, energy and the speedup over the
dense INT16 schedule on the same machine. ``python -m energon_tvm.workload_demo``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .isa.config import load_config
from .mpmrf import float_attention, mpmrf_attention
from .runtime_sim import run_attention
from .schedules import AttentionWorkload, default_schedule, dense_workload, emit_program
from .workloads import structured_qkv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m energon_tvm.workload_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="edge", help="hardware config: edge, server or a .toml file")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    s, h, d = args.seq, args.heads, args.head_dim
    rng = np.random.default_rng(args.seed)
    q, k, v = structured_qkv(rng, 1, h, s, s, d)
    mask = np.zeros((1, 1, 1, s), np.float32)
    mask[..., s - s // 8:] = -np.inf  # the last eighth of the batch is padding
    w = AttentionWorkload(1, h, s, s, d, bias_shape=mask.shape)

    t0 = time.perf_counter()
    schedule = default_schedule(w, cfg)
    program = emit_program(w, schedule, cfg)
    out, result = run_attention(program, cfg, q, k, v, mask)
    wall = time.perf_counter() - t0
    ref = mpmrf_attention(q, k, v, mask, w.params)
    exact = np.allclose(out, ref.output, rtol=1e-5, atol=1e-6 * np.abs(ref.output).max())
    dense = dense_workload(w)
    _, dense_result = run_attention(emit_program(dense, default_schedule(dense, cfg), cfg), cfg, q, k, v, mask)
    flt = float_attention(q, k, v, mask)
    cos = float(np.sum(out * flt) / (np.linalg.norm(out) * np.linalg.norm(flt)))

    st, ds = result.stats, dense_result.stats
    print(f"Energon {cfg.name}: attention B=1 H={h} S={s} D={d}, padding mask, MP-MRF " + ", ".join(
        r.describe() for r in w.params.rounds))
    print(f"  schedule: {schedule.to_json()}")
    print(f"  program: {len(program.code)} instructions, {len(program.to_bytes(cfg))} bytes")
    print("  kept ratio per round: " + ", ".join(f"{r:.3f}" for r in st["kept_ratio"]))
    print(f"  simulated: {st['cycles']} cycles ({st['time_us']:.1f} us), {st['energy_pj']['total'] / 1e6:.2f} uJ; "
          f"dense INT16: {ds['cycles']} cycles, {ds['energy_pj']['total'] / 1e6:.2f} uJ")
    print(f"  speedup over dense on the same machine: {ds['cycles'] / st['cycles']:.2f}x")
    print(f"  output equals the MP-MRF reference: {'yes' if exact else 'NO'}; cosine to float attention: {cos:.5f}")
    print(f"  simulator wall time: {wall * 1e3:.0f} ms")
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
