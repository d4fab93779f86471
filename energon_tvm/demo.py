"""The main job on the default workload, as far as the stack goes today.

Runs MP-MRF (the numpy reference) with the default parameters on a MiniLM-like attention workload
(B=1, H=12, S=128, D=32) with structured Q/K, and prints the kept ratio per round and the output's
agreement with float attention. ``python -m energon_tvm.demo``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .mpmrf import MPMRFParams, float_attention, mpmrf_attention
from .workloads import structured_qkv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m energon_tvm.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    q, k, v = structured_qkv(np.random.default_rng(args.seed), 1, args.heads, args.seq, args.seq, args.head_dim)
    params = MPMRFParams()
    t0 = time.perf_counter()
    res = mpmrf_attention(q, k, v, None, params)
    elapsed = time.perf_counter() - t0
    ref = float_attention(q, k, v)
    cos = float(np.sum(res.output * ref) / (np.linalg.norm(res.output) * np.linalg.norm(ref)))
    print(f"MP-MRF reference, B=1 H={args.heads} S={args.seq} D={args.head_dim}, "
          f"{len(params.rounds)} rounds: " + ", ".join(
              f"Q{r.q_bits}xK{r.k_bits} alpha={r.alpha:g}" for r in params.rounds))
    for i, ratio in enumerate(res.kept_ratios(), 1):
        print(f"  kept ratio after round {i}: {ratio:.3f}")
    print(f"  cosine similarity to float attention: {cos:.5f}")
    print(f"  reference wall time: {elapsed * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
