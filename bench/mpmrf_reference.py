"""MP-MRF reference: wall time against dense float attention, and kept ratios over an alpha sweep.

    python bench/mpmrf_reference.py [--seq 512] [--heads 12] [--head-dim 64] [--repeat 5]

Prints two tables: the time of ``mpmrf_attention`` (default 2 rounds) and of a dense float64 numpy
attention for B=1, H=12, S=512, D=64; then, on structured Q/K (topic clusters, a positional band and
sink keys; see energon_tvm.workloads), the kept ratio after each round and the output's cosine
similarity to float attention for a sweep of alpha.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, timed  # noqa: E402

from energon_tvm.mpmrf import MPMRFParams, float_attention, mpmrf_attention  # noqa: E402
from energon_tvm.workloads import structured_qkv  # noqa: E402


def cosine(a, b):
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    s, h, d = args.seq, args.heads, args.head_dim
    q, k, v = structured_qkv(rng, 1, h, s, s, d)

    t = timed({"ref": lambda: mpmrf_attention(q, k, v), "dense": lambda: float_attention(q, k, v)}, args.repeat)
    print(table(["implementation", "best ms", "median ms"], [
        [label, f"{t[key].best * 1e3:.1f}", f"{t[key].median * 1e3:.1f}"]
        for key, label in [("ref", "MP-MRF reference (Q4xK2, Q4xK4; default alphas)"),
                           ("dense", "dense float attention (numpy float64)")]
    ], f"Wall time, B=1 H={h} S={s} D={d}, {args.repeat} interleaved rounds"))

    ref = float_attention(q, k, v)
    print(f"\n## Kept ratio vs alpha, structured Q/K, B=1 H={h} S={s} D={d}\n")
    print("| alpha round 1 | alpha round 2 | kept after r1 | kept after r2 | cosine to float |")
    print("|---:|---:|---:|---:|---:|")
    for a1, a2 in [(-1, -1), (-0.5, -0.5), (-0.25, 0.0), (0.0, 0.0), (0.0, 0.25), (0.25, 0.25),
                   (0.25, 0.5), (0.5, 0.5), (0.5, 0.75)]:
        res = mpmrf_attention(q, k, v, None, MPMRFParams.from_alphas([a1, a2]))
        r1, r2 = res.kept_ratios()
        print(f"| {a1:+.2f} | {a2:+.2f} | {r1:.3f} | {r2:.3f} | {cosine(res.output, ref):.5f} |")


if __name__ == "__main__":
    main()
