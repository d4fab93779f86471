"""MP-MRF against dense on the main job, by input length: where the padding leaves the filter too little.

    python bench/lengths.py [--dataset 1000] [--out out]

all-MiniLM-L6-v2 at seq_len 128 on `edge`, the default selection against the dense INT16 schedule (no
filter round), both through ``tvmc compile``; ``--dataset`` distinct tweets of VADER's corpus (as
bench/model.py's end-to-end table) on the timing backend (a full run's cycles and energy). Prints, per
band of real tokens (the attention mask's ones, [CLS] and [SEP] included): the inputs, the mean cycles
of each, the paired speedup (dense / MP-MRF cycles per input: mean and standard error), the share of
inputs MP-MRF runs faster on, and the paired energy ratio (MP-MRF / dense).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table  # noqa: E402
from model import dataset_inputs  # noqa: E402

from energon_tvm.models import minilm  # noqa: E402
from energon_tvm.tvmc import compile_model, write  # noqa: E402
from energon_tvm.tvmc.runner import run_dataset  # noqa: E402

BANDS = ((1, 11), (12, 19), (20, 27), (28, 39), (40, 128))


def mean_se(x: np.ndarray) -> str:
    se = x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return f"{x.mean():.3f} +- {se:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=int, default=1000, help="distinct tweets (1000)")
    ap.add_argument("--out", default="out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "minilm-s128.onnx"
    if not onnx_path.exists():
        minilm.export_onnx(onnx_path, seq_len=128)
    inputs = dataset_inputs(out, args.dataset)
    runs = {}
    for name, rounds in (("mp-mrf", None), ("dense", "none")):
        path = out / f"lengths-edge-{name}.tar"
        write(compile_model(onnx_path, target="energon, llvm", config="edge", rounds=rounds), path)
        runs[name] = run_dataset(path, inputs, backend="timing", progress=True)
    tokens = np.load(inputs)["attention_mask"].sum(axis=(1, 2))
    mp, dn = runs["mp-mrf"], runs["dense"]
    speedup, energy = dn.cycles / mp.cycles, mp.energy_pj / dn.energy_pj
    rows = []
    for lo, hi in (*BANDS, (1, 128)):
        m = (tokens >= lo) & (tokens <= hi)
        if not m.any():
            continue
        rows.append([f"{lo}-{hi}" if (lo, hi) != (1, 128) else "all", f"{m.sum():,}",
                     f"{mp.cycles[m].mean():,.0f}", f"{dn.cycles[m].mean():,.0f}", mean_se(speedup[m]),
                     f"{(speedup[m] > 1).mean():.0%}", mean_se(energy[m])])
    print(table(["real tokens", "inputs", "MP-MRF cycles", "dense cycles", "speedup (paired)", "MP-MRF faster on",
                 "energy vs dense (paired)"], rows,
                f"all-MiniLM-L6-v2 S=128 on edge, {args.dataset:,} tweets, per inference, by real tokens "
                f"(median {np.median(tokens):g}, {tokens.min()}-{tokens.max()})"))


if __name__ == "__main__":
    main()
