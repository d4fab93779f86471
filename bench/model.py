"""The benchmark suite on the real model: all-MiniLM-L6-v2 (seq_len 128) end to end.

    python bench/model.py [--sentences 4] [--out out]

Prints, in one run:
1. compile time of `tvmc compile` (energon, llvm) against an llvm-only build of the same model;
2. host wall time per inference: the llvm-only package, the Energon package (host + simulator), and
   onnxruntime on the same model on this machine;
3. per inference on `edge` and `server`: simulated cycles, energy, DRAM traffic, FU/AU utilisation and
   the speedup over the dense INT16 schedule on the same machine;
4. a design-space sweep of the edge machine (DRAM bandwidth x buffer scale): the speedup over dense,
   from timing-only runs driven by the sparsity the real sentences produced (plot in docs/).
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
from energon_tvm.runtime_sim import Simulator, SparsityProfile  # noqa: E402
from energon_tvm.schedules import default_schedule, dense_workload, emit_program  # noqa: E402

from energon_tvm.demo import SENTENCES  # noqa: E402
from energon_tvm.models import minilm  # noqa: E402
from energon_tvm.tvmc import compile_model, write  # noqa: E402
from energon_tvm.tvmc.runner import PackageSession, per_inference  # noqa: E402


def run_sentences(path, sentences, capture=False):
    walls, runs = [], []
    with PackageSession(path) as session:
        for text in sentences:
            feeds = minilm.tokenize([text], 128)
            t0 = time.perf_counter()
            _, calls = session.run({k: feeds[k] for k in minilm.INPUT_NAMES}, capture=capture)
            walls.append(time.perf_counter() - t0)
            runs.append(calls)
    return float(np.mean(walls)), runs


def design_space(captured_runs, out_png):
    """Speedup over dense on edge variants, timing-only, with the captured calls' sparsity."""
    from energon_tvm.mpmrf import reference_attention

    base = load_config("edge")
    calls = [c for calls in captured_runs for c in calls]
    profiles = []
    for c in calls:
        w, inp = c.workload, c.inputs
        ref = reference_attention(w, inp["q"], inp["k"], inp["v"], inp["bias"])
        profiles.append((w, SparsityProfile.from_reference(ref), SparsityProfile((SparsityProfile.from_reference(
            ref).masks[0],))))
    bandwidths = [6.4, 12.8, 25.6, 51.2, 102.4]
    scales = [0.5, 1, 2, 4]
    grid = np.zeros((len(scales), len(bandwidths)))
    for i, scale in enumerate(scales):
        for j, bw in enumerate(bandwidths):
            cfg = base.replace(name=f"edge-bw{bw}-x{scale}", dram_bandwidth_gbps=bw,
                               buffer_bytes=tuple(int(b * scale) for b in base.buffer_bytes))
            sim = Simulator(cfg)
            sparse = dense = 0
            for w, prof, dense_prof in profiles:
                sparse += sim.run(emit_program(w, default_schedule(w, cfg), cfg), profile=prof).cycles
                dw = dense_workload(w)
                dense += sim.run(emit_program(dw, default_schedule(dw, cfg), cfg), profile=dense_prof).cycles
            grid[i, j] = dense / sparse
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    im = ax.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    ax.set_xticks(range(len(bandwidths)), [f"{b:g}" for b in bandwidths])
    ax.set_yticks(range(len(scales)), [f"{s:g}x" for s in scales])
    ax.set_xlabel("DRAM bandwidth (GB/s)")
    ax.set_ylabel("on-chip buffers (x edge)")
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_title("MP-MRF speedup over dense, all-MiniLM-L6-v2 attention (edge variants)")
    fig.colorbar(im, ax=ax)
    fig.savefig(out_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return bandwidths, scales, grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--out", default="out")
    ap.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "design_space.png"))
    args = ap.parse_args()
    out = Path(args.out)
    onnx_path = out / "minilm-s128.onnx"
    if not onnx_path.exists():
        minilm.export_onnx(onnx_path, seq_len=128)
    sentences = SENTENCES[:args.sentences]

    compile_model(onnx_path, target="llvm")  # warm-up: the first build pays TVM's one-time start-up costs
    packages, compile_rows = {}, []
    for name, target, cfg, rounds in (("llvm", "llvm", None, None), ("edge", "energon, llvm", "edge", None),
                                      ("edge-dense", "energon, llvm", "edge", "none"),
                                      ("server", "energon, llvm", "server", None),
                                      ("server-dense", "energon, llvm", "server", "none")):
        t0 = time.perf_counter()
        result = compile_model(onnx_path, target=target, config=cfg, rounds=rounds)
        path = out / f"bench-{name}.tar"
        write(result, path)
        packages[name] = path
        compile_rows.append([name if name != "llvm" else "llvm only", target + (
            " (dense)" if rounds else ""), f"{time.perf_counter() - t0:.1f}",
            ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())])
    print(table(["package", "target", "compile s", "of which"], compile_rows,
                "Compile time, all-MiniLM-L6-v2 seq_len 128"))

    walls, runs = {}, {}
    for name, path in packages.items():
        walls[name], runs[name] = run_sentences(path, sentences, capture=(name == "edge"))
    t0 = time.perf_counter()
    minilm.embed_onnxruntime(onnx_path, sentences * 3, progress=False)
    ort_wall = (time.perf_counter() - t0) / (3 * len(sentences))
    print(table(["", "ms per inference"], [
        ["onnxruntime, float, this machine's CPU", f"{ort_wall * 1e3:.1f}"],
        ["TVM llvm only (host; default schedules, no tuning)", f"{walls['llvm'] * 1e3:.0f}"],
        ["TVM host + Energon simulator (edge, MP-MRF)", f"{walls['edge'] * 1e3:.0f}"],
        ["  of which the simulator (difference)", f"{(walls['edge'] - walls['llvm']) * 1e3:.0f}"],
    ], f"Host wall time per inference (mean of {len(sentences)} sentences)"))

    rows = []
    for machine in ("edge", "server"):
        sparse, dense = runs[machine], runs[f"{machine}-dense"]
        cfg = load_config(machine)
        mp, dn = per_inference(sparse), per_inference(dense)
        cycles, dcycles = mp["cycles"], dn["cycles"]
        util = {u: np.mean([c.stats["units"][u]["utilization"] for r in sparse for c in r])
                for u in ("filter", "attend")}
        rows.append([machine, f"{cycles:,.0f}", f"{cycles / cfg.clock_ghz / 1e3:.1f}",
                     f"{mp['energy_pj'] / 1e6:.1f}", f"{mp['dram_bytes'] / 1e6:.2f}", f"{util['filter']:.0%}",
                     f"{util['attend']:.0%}", f"{mp['kept_ratio'][-1]:.3f}", f"{dcycles:,.0f}",
                     f"{dcycles / cycles:.2f}x", f"{dn['energy_pj'] / mp['energy_pj']:.2f}x"])
    print(table(["machine", "cycles", "us", "energy uJ", "DRAM MB", "FU util", "AU util", "kept ratio",
                 "dense cycles", "speedup", "energy saving"], rows,
                "Simulated attention per inference (6 layers), default MP-MRF"))

    bandwidths, scales, grid = design_space(runs["edge"][:1], args.plot)  # one sentence: six layers
    print(table(["buffers \\ GB/s"] + [f"{b:g}" for b in bandwidths],
                [[f"{s:g}x"] + [f"{v:.2f}x" for v in grid[i]] for i, s in enumerate(scales)],
                f"Design space: MP-MRF speedup over dense on edge variants (plot: {args.plot})"))


if __name__ == "__main__":
    main()
