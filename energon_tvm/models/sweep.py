"""Accuracy against sparsity: MP-MRF on all-MiniLM-L6-v2, scored by the VADER movie-review probe.

The sweep runs the model in torch with every attention replaced by the MP-MRF reference
(:func:`energon_tvm.mpmrf.mpmrf_attention`, whose kept sets the simulator reproduces bit for bit and
whose outputs it matches to 1e-5; see tests/sim and tests/schedules), because thousands of sentences
times a dozen settings are out of reach of instruction-level simulation on two cores. Sentences are
padded to the longest of their batch (a multiple of 8) rather than to the deployed 128: padded keys
are masked either way, so only the INT16 scales, which span the padded query rows too, can differ;
``tvmc run`` at the fixed length is the check of the deployed path (the main job).

Protocol: 3,400 polar snippets are sampled with a fixed seed; a logistic-regression probe is trained
once on dense (float) embeddings of 1,400 of them; every setting is scored on the other 2,000.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..isa.numerics import MPMRFParams
from . import corpus, probe
from .evaluation import LayerAttention

MODEL = "all-MiniLM-L6-v2"
#: (alpha round 1, alpha round 2) settings of the sweep, densest first
ALPHAS = [(-1.0, -1.0), (-0.75, -0.5), (-0.5, -0.5), (-0.5, -0.25), (-0.5, 0.0), (-0.25, -0.25), (-0.25, 0.0),
          (0.0, -0.25), (0.0, 0.0), (0.0, 0.25), (0.25, 0.25), (0.25, 0.5)]
#: the view-rule comparison runs the other rule over this subset, spanning the same kept ratios
VIEW_ALPHAS = [(-0.5, -0.5), (-0.5, 0.0), (-0.25, 0.0), (0.0, 0.0), (0.25, 0.25)]


@dataclass(frozen=True)
class Point:
    view: str
    alphas: tuple[float, ...]
    kept_ratio: tuple[float, ...]
    accuracy: float
    cosine: float      # mean cosine of the embeddings to the float model's
    seconds: float


def run_sweep(n_train: int = 1400, n_eval: int = 2000, seed: int = 0, alphas=ALPHAS, views=("msb", "round"),
              batch: int = 64, progress: bool = True, on_point=None) -> dict:
    """Score every (view, alphas) setting; ``views[0]`` runs all of ``alphas``, the others
    :data:`VIEW_ALPHAS`. ``on_point(results)`` is called after each setting (e.g. to save progress)."""
    items = corpus.fetch_vader_movie_reviews()
    rows = corpus.sample_rows(items, n_train + n_eval, seed=seed)
    labels = corpus.labels_of(items, rows)
    texts = [items[r][0] for r in rows]
    train, test = probe.stratified_split(labels, n_eval / (n_train + n_eval), seed)
    from . import zoo

    attention = LayerAttention()
    model = zoo.load_model(MODEL, attention=attention)

    def embed(texts, label):
        return zoo.embed(MODEL, model, texts, batch, progress=label if progress else None)

    attention.reset(None)
    t0 = time.perf_counter()
    dense = embed(texts, "float attention")
    trained = probe.train_probe(dense[train], labels[train], seed=seed)
    dense_acc = probe.accuracy(trained, dense[test], labels[test])
    if progress:
        print(f"  float attention: accuracy {dense_acc:.4f} on {len(test)} held-out snippets "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    results = {"n_train": int(len(train)), "n_eval": int(len(test)), "seed": seed, "dense_accuracy": dense_acc,
               "dense_seconds": time.perf_counter() - t0, "points": []}
    eval_texts = [texts[i] for i in test]
    for n, view in enumerate(views):
        for a in (alphas if n == 0 else VIEW_ALPHAS):
            params = MPMRFParams.from_alphas(a).with_view(view)
            attention.reset(params)
            t0 = time.perf_counter()
            emb = embed(eval_texts, f"{view} alpha {a}")
            point = Point(view, tuple(a), tuple(attention.ratios()), probe.accuracy(trained, emb, labels[test]),
                          float(np.mean(np.sum(emb * dense[test], axis=1))), time.perf_counter() - t0)
            results["points"].append(point)
            if progress:
                kept = " / ".join(f"{r:.3f}" for r in point.kept_ratio)
                print(f"  {view:5s} alpha {a[0]:+.2f},{a[1]:+.2f}: kept {kept}"
                      f"  accuracy {point.accuracy:.4f} (dense {dense_acc:.4f})  cosine {point.cosine:.4f}"
                      f"  [{point.seconds:.0f} s]", flush=True)
            if on_point is not None:
                on_point(results)
    return results


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both final kept ratio (lower) and accuracy (higher)."""
    front = []
    for p in points:
        if not any(o.kept_ratio[-1] <= p.kept_ratio[-1] and o.accuracy >= p.accuracy and o != p
                   and (o.kept_ratio[-1] < p.kept_ratio[-1] or o.accuracy > p.accuracy) for o in points):
            front.append(p)
    return sorted(front, key=lambda p: p.kept_ratio[-1])


def choose_default(results: dict, view: str = "msb", tolerance: float = 0.005) -> Point | None:
    """The sparsest setting (lowest final kept ratio) whose accuracy is within ``tolerance`` of dense."""
    ok = [p for p in results["points"] if p.view == view and p.accuracy >= results["dense_accuracy"] - tolerance]
    return min(ok, key=lambda p: p.kept_ratio[-1]) if ok else None


def plot(results: dict, path) -> None:
    """Kept ratio against accuracy, per view rule, with the Pareto front and the dense accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for view, marker in (("msb", "o"), ("round", "s")):
        pts = [p for p in results["points"] if p.view == view]
        if not pts:
            continue
        ax.scatter([p.kept_ratio[-1] for p in pts], [100 * p.accuracy for p in pts], marker=marker,
                   label=f"MP-MRF, {view} views")
        front = pareto(pts)
        ax.plot([p.kept_ratio[-1] for p in front], [100 * p.accuracy for p in front], "--", alpha=0.6)
        for p in pts:
            ax.annotate(f"{p.alphas[0]:g},{p.alphas[1]:g}", (p.kept_ratio[-1], 100 * p.accuracy), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    dense = 100 * results["dense_accuracy"]
    ax.axhline(dense, color="k", lw=1, label=f"float attention ({dense:.2f}%)")
    ax.axhspan(dense - 0.5, dense, color="k", alpha=0.08, label="within 0.5 points")
    ax.set_xlabel("kept ratio after the last round (kept pairs / candidate pairs)")
    ax.set_ylabel("probe accuracy (%)")
    ax.set_title(f"all-MiniLM-L6-v2, VADER movie reviews ({results['n_eval']} held-out snippets)")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown(results: dict) -> str:
    lines = [f"dense (float attention) accuracy: {results['dense_accuracy']:.4f} on {results['n_eval']} held-out "
             f"snippets (probe trained on {results['n_train']})", "",
             "| view | alpha r1 | alpha r2 | kept after r1 | kept after r2 | accuracy | vs dense (points) "
             "| cosine to float | Pareto |", "|---|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    fronts = {v: set(pareto([p for p in results["points"] if p.view == v])) for v in ("msb", "round")}
    for p in results["points"]:
        lines.append(f"| {p.view} | {p.alphas[0]:+.2f} | {p.alphas[1]:+.2f} | {p.kept_ratio[0]:.3f} | "
                     f"{p.kept_ratio[-1]:.3f} | {p.accuracy:.4f} "
                     f"| {100 * (p.accuracy - results['dense_accuracy']):+.2f} "
                     f"| {p.cosine:.4f} | {'*' if p in fronts[p.view] else ''} |")
    return "\n".join(lines)


def to_json(results: dict) -> dict:
    out = {k: v for k, v in results.items() if k != "points"}
    out["points"] = [{"view": p.view, "alphas": list(p.alphas), "kept_ratio": list(p.kept_ratio),
                      "accuracy": p.accuracy, "cosine": p.cosine, "seconds": p.seconds} for p in results["points"]]
    return out
