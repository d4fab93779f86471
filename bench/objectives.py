"""The heuristic's objectives on real models: what ranking by cycles, by energy-delay product and by
energy gives, paired per input.

    python bench/objectives.py [--models M1,M2,...] [--short 16] [--long 6] [--configs edge,server]

Each model's attention is captured on real text (float attention, every layer): ``--short`` test
sentences of tweets-intensity at their own length (padded to a multiple of 8, as the policy comparison
of docs/policies.md runs them) and ``--long`` documents of 40 consecutive movies-polarity test reviews,
cut to 512 tokens. Every
call is scheduled by the heuristic under each objective (energon_tvm.schedules.cost.OBJECTIVES) and
simulated timing-only on the numpy reference's kept sets (the default selection, and dense), so the
three rankings are compared on the same calls. Per input (one inference: every layer's call), the
edp- and energy-ranked runs' cycles and energy over the cycles-ranked run's: mean +- standard error
over the inputs, and the share of calls each ranking scheduled differently.
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
    default_schedule,
    emit_program,  # noqa: E402
)
from energon_tvm.schedules.cost import OBJECTIVES  # noqa: E402

from energon_tvm.models import compare, evaluation, tasks, zoo  # noqa: E402
from energon_tvm.tuner import profile_from_arrays  # noqa: E402

MODELS = ("all-MiniLM-L6-v2", "all-mpnet-base-v2", "multilingual-e5-small")
SETTINGS = {"gap 8/4": MPMRFParams(), "dense": MPMRFParams(())}
#: movies-polarity's test items are one or two sentences: a long input joins this many, then is cut
REVIEWS_PER_DOCUMENT = 40


def capture(name: str, short: int, long: int) -> dict[str, list[list[tuple]]]:
    """Each input set's inferences (lists of calls: q, k, v, mask row, scale) on model ``name``."""
    hook = evaluation.LayerAttention()
    model = zoo.load_model(name, attention=hook)
    sets = {}
    for label, task, n, max_len in (("short", "tweets-intensity", short, 128), ("long", "movies-polarity", long, 512)):
        if not n:
            continue
        texts = list(tasks.load_task(task).test_texts)
        if label == "long":  # a document of consecutive reviews, cut to max_len tokens by the tokenizer
            texts = [" ".join(texts[i * REVIEWS_PER_DOCUMENT:(i + 1) * REVIEWS_PER_DOCUMENT]) for i in range(n)]
        texts = texts[:n]
        samples = evaluation.calibration_samples(lambda t, m=max_len: zoo.embed(name, model, t, batch=1, max_len=m),
                                                 hook, texts)
        sets[label] = compare.model_inferences(samples)
    return sets


def run_inputs(inferences, params: MPMRFParams, cfgs) -> dict:
    """{(config, objective): (cycles [n], energy pJ [n], calls rescheduled against cycles, calls)}."""
    per = {(c.name, o): [[], [], 0, 0] for c in cfgs for o in OBJECTIVES}
    for calls in inferences:
        totals = {key: [0, 0.0] for key in per}
        for q, k, v, mask, scale in calls:
            b, h, s, d = q.shape
            w = AttentionWorkload(b, h, s, k.shape[2], d, bias_shape=None if mask is None else mask.shape,
                                  scale=scale, params=params)
            profile = profile_from_arrays(w, q, k, v, mask)
            for cfg in cfgs:
                sim, seen = Simulator(cfg), {}
                fastest = default_schedule(w, cfg, "cycles")
                for objective in OBJECTIVES:
                    schedule = default_schedule(w, cfg, objective)
                    if schedule not in seen:
                        seen[schedule] = sim.run(emit_program(w, schedule, cfg), profile=profile).stats
                    st = seen[schedule]
                    key = (cfg.name, objective)
                    totals[key][0] += st["cycles"]
                    totals[key][1] += st["energy_pj"]["total"]
                    per[key][2] += schedule != fastest
                    per[key][3] += 1
        for key, (cyc, pj) in totals.items():
            per[key][0].append(cyc)
            per[key][1].append(pj)
    return {key: (np.array(c, np.float64), np.array(e, np.float64), moved, n) for key, (c, e, moved, n) in per.items()}


def paired(x: np.ndarray, base: np.ndarray) -> str:
    r = x / base
    se = r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0
    return f"{r.mean():.3f} +- {se:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--short", type=int, default=16, help="tweets at their own length (16)")
    ap.add_argument("--long", type=int, default=6, help="movie reviews cut to 512 tokens (6)")
    ap.add_argument("--configs", default="edge,server")
    args = ap.parse_args()
    cfgs = [load_config(c) for c in args.configs.split(",")]
    rows: dict[tuple[str, str], list] = {}
    for name in args.models.split(","):
        t0 = time.perf_counter()
        sets = capture(name, args.short, args.long)
        for label, inferences in sets.items():
            lengths = sorted({calls[0][0].shape[2] for calls in inferences})
            for setting, params in SETTINGS.items():
                res = run_inputs(inferences, params, cfgs)
                for cfg in cfgs:
                    base_c, base_e, _, n = res[(cfg.name, "cycles")]
                    row = [name, f"{label} ({len(inferences)}; S {lengths[0]}-{lengths[-1]})", setting,
                           f"{base_c.mean():,.0f}", f"{base_e.mean() / 1e6:,.1f}"]
                    for objective in ("edp", "energy"):
                        c, e, moved, _ = res[(cfg.name, objective)]
                        row += [paired(c, base_c), paired(e, base_e), paired(c * e, base_c * base_e),
                                f"{moved} of {n}"]
                    rows.setdefault((cfg.name, label), []).append(row)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    for (cfg_name, label), body in rows.items():
        print(table(["model", "inputs", "selection", "cycles", "uJ",
                     "edp: cycles", "energy", "EDP", "calls moved",
                     "energy: cycles", "energy", "EDP", "calls moved"], body,
                    f"{cfg_name}, {label} inputs: ranked by cycles (per inference), and the edp- and energy-"
                    f"ranked runs over it (paired per input, mean +- s.e.)"))


if __name__ == "__main__":
    main()
