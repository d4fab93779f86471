"""Autotuner: tuned cycles against the heuristic, and trials to reach the exhaustive best.

    python bench/tuner.py [--trials 64] [--tuned-seeds 3] [--seeds 10] [--configs edge,server]
                          [--workers 2] [--exhaustive-records FILE] [--skip-tuned | --skip-exhaustive]

Workloads: MiniLM (B=1, H=12, S=128, D=32, padding mask bias_shape=(1,1,1,128); calibration: a
96-token sentence padded to 128) and BERT-base S=512 (B=1, H=12, S=512, D=64, no mask), structured
synthetic Q/K/V (energon_tvm.workloads), the default MP-MRF parameters (MPMRFParams()). Cycles are
the timing-only simulator's on the calibration sparsity profile.

1. For each workload and config: the heuristic's cycles, and the best of ``--trials`` measurements
   (the heuristic's own is trial 0) with the xgb and random tuners: the median, min and max over
   ``--tuned-seeds`` sessions.
2. On a space small enough to measure every point (MiniLM on edge, coarse knobs: q_tile 8..128,
   k_chunk multiples of 16, every slot count and mode): how many trials xgb, random and grid need
   to come within 2% of the exhaustive best, over ``--seeds`` seeds (heuristic not included, batches
   of 8 as in ``tune``). The tuners are replayed against the exhaustive table: a measurement is
   deterministic, so replaying it is the same as re-measuring. ``--exhaustive-records FILE`` keeps
   that table as tuning records (read if the file exists, written otherwise), so a re-run skips the
   ~10 minutes it takes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from energon_tvm.isa.config import load_config
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.tuner import (
    LocalRunner,
    MeasureResult,
    MeasureTask,
    SearchSpace,
    TuningRecord,
    append_records,
    make_tuner,
    profile_from_arrays,
    read_records,
    tune,
)
from energon_tvm.workloads import structured_qkv

MINILM = AttentionWorkload(1, 12, 128, 128, 32, bias_shape=(1, 1, 1, 128))
BERT512 = AttentionWorkload(1, 12, 512, 512, 64)
MINILM_TOKENS = 96
COARSE_KNOBS = {"q_tile": [8, 16, 32, 64, 128], "k_chunk": list(range(16, 129, 16))}
WITHIN = 0.02


def calibration_profile(w: AttentionWorkload, tokens: int | None = None):
    q, k, v = structured_qkv(np.random.default_rng(0), w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim)
    mask = None
    if w.bias_shape is not None:
        mask = np.zeros(w.bias_shape, np.float32)
        mask[..., tokens:] = -np.inf
    return profile_from_arrays(w, q, k, v, mask)


def table(headers, rows, title):
    out = [f"\n## {title}\n", "| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    print("\n".join(out), flush=True)


def fmt_schedule(s) -> str:
    return (f"q{s.q_tile} k{s.k_chunk} t{s.tile_slots} kv{s.kv_slots} o{s.out_slots} "
            f"{s.plane_mode}/{s.filter_mode}/kv-{s.kv_mode}")


def note(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def summary(results, heuristic_cycles: int) -> str:
    """Median best cycles of several sessions (and its speedup), with the range when there are more."""
    cycles = sorted(r.best_cycles for r in results)
    med = statistics.median_low(cycles)
    spread = f" [{cycles[0]:,}-{cycles[-1]:,}]" if len(cycles) > 1 else ""
    return f"{med:,} ({heuristic_cycles / med:.2f}x){spread}"


def tuned_vs_heuristic(args, runner) -> None:
    rows = []
    seeds = range(args.tuned_seeds)
    for name, w, tokens in (("MiniLM S=128", MINILM, MINILM_TOKENS), ("BERT-base S=512", BERT512, None)):
        profile = calibration_profile(w, tokens)
        kept = profile.kept_ratios()[-1]
        for cfg_name in args.configs.split(","):
            cfg = load_config(cfg_name)
            runs = {}
            for tuner in ("xgb", "random"):
                runs[tuner] = []
                for seed in seeds:
                    t0 = time.perf_counter()
                    res = tune(w, cfg, profile, trials=args.trials, tuner=tuner, seed=seed, runner=runner,
                               progress=args.progress)
                    runs[tuner].append(res)
                    note(f"{name} {cfg_name} {tuner} seed {seed}: {res.best_cycles} cycles in "
                         f"{time.perf_counter() - t0:.0f} s")
            h = runs["xgb"][0].heuristic
            best = min(runs["xgb"] + runs["random"], key=lambda r: r.best_cycles)
            rows.append([name, cfg_name, f"{kept:.3f}", runs["xgb"][0].space_size, f"{h.cycles:,}",
                         fmt_schedule(h.schedule), summary(runs["xgb"], h.cycles), summary(runs["random"], h.cycles),
                         f"{best.best_cycles:,} {fmt_schedule(best.best_schedule)}"])
    table(["workload", "config", "kept ratio", "space", "heuristic cycles", "heuristic schedule",
           f"xgb best of {args.trials}", f"random best of {args.trials}", "best found"], rows,
          f"Tuned cycles against the heuristic ({args.trials} trials per session, heuristic = trial 0; "
          f"median [min-max] over seeds 0..{args.tuned_seeds - 1})")


def trials_to_reach(tuner, results: dict, target: float, cap: int, batch: int = 8) -> int | None:
    """Drive ``tuner`` as :func:`tune` does (batches of 8, no heuristic trial) until a measurement
    comes within ``target``: the trial count, or None if ``cap`` trials do not get there."""
    done = 0
    while done < cap and tuner.has_next():
        picks = tuner.next_batch(min(batch, cap - done))
        measured = [results[tuner.space[i]] for i in picks]
        tuner.update(picks, measured)
        for n, r in enumerate(measured, done + 1):
            if r.ok and r.cycles <= target:
                return n
        done += len(picks)
    return None


def exhaustive_study(args, runner) -> None:
    cfg = load_config("edge")
    w = MINILM
    profile = calibration_profile(w, MINILM_TOKENS)
    space = SearchSpace.build(w, cfg, knobs=COARSE_KNOBS)
    task = MeasureTask.create(w, cfg, profile)
    t0 = time.perf_counter()
    results = {}
    path = args.exhaustive_records
    if path and Path(path).exists():
        key, fp = w.key(), cfg.fingerprint.hex()
        results = {r.schedule: MeasureResult(r.cycles, r.instructions, r.error) for r in read_records(path)
                   if r.workload_key == key and r.config_fingerprint == fp and r.profile == task.profile_digest}
        missing = [s for s in space if s not in results]
        if missing:
            sys.exit(f"{path} lacks {len(missing)} of the {len(space)} points; delete it to re-measure")
        took = "(read from records)"
    else:
        batch = 64
        for i in range(0, len(space), batch):
            points = space.points[i:i + batch]
            results.update(zip(points, runner.run(task, points)))
            note(f"exhaustive: {min(i + batch, len(space))}/{len(space)} ({time.perf_counter() - t0:.0f} s)")
        took = f"{time.perf_counter() - t0:.0f} s"
        if path:
            meta = dict(workload_key=w.key(), workload=w.to_dict(), config=cfg.name,
                        config_fingerprint=cfg.fingerprint.hex(), profile=task.profile_digest, tuner="exhaustive")
            append_records(path, [TuningRecord(schedule=s, cycles=results[s].cycles, error=results[s].error,
                                               instructions=results[s].instructions, trial=n, **meta)
                                  for n, s in enumerate(space)])
    cycles = {s: r.cycles for s, r in results.items() if r.ok}
    best = min(cycles.values())
    target = best * (1 + WITHIN)
    near = sum(c <= target for c in cycles.values())
    (heuristic,) = runner.run(task, [space.heuristic("cycles")])
    table(["space", "points", "measured in", "exhaustive best", "best schedule", f"points within {WITHIN:.0%}",
           "heuristic"],
          [["MiniLM S=128, edge, coarse knobs", len(space), took, f"{best:,}",
            fmt_schedule(min(cycles, key=cycles.get)), near,
            f"{heuristic.cycles:,} ({heuristic.cycles / best:.3f}x best)"]],
          "Exhaustive search space")

    rows = []
    cap = len(space) if args.cap is None else min(len(space), args.cap)
    for tuner, seeds in (("xgb", range(args.seeds)), ("random", range(args.seeds)), ("grid", [0])):
        needed = []
        for seed in seeds:
            n = trials_to_reach(make_tuner(tuner, space, seed), results, target, cap)
            needed.append(n if n is not None else float("inf"))
        finite = [n for n in needed if n != float("inf")]
        misses = len(needed) - len(finite)
        rows.append([tuner, len(needed), f"{statistics.mean(needed):.1f}" if not misses else f"> {cap}",
                     f"{statistics.median(needed):.0f}" if statistics.median(needed) != float("inf") else f"> {cap}",
                     min(needed) if finite else "-", max(finite) if finite else "-", misses])
    # sampling without replacement: the first of `near` good points among N comes at (N + 1) / (near + 1)
    rows.append(["random, expected", "-", f"{(len(space) + 1) / (near + 1):.1f}", "-", "-", "-", "-"])
    table(["tuner", "seeds", "mean trials", "median", "min", "max", f"seeds not within {WITHIN:.0%} by {cap}"], rows,
          f"Trials to come within {WITHIN:.0%} of the exhaustive best ({len(space)}-point space, batches of 8)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=10, help="seeds per tuner in part 2")
    ap.add_argument("--tuned-seeds", type=int, default=3, help="seeds per tuner in part 1")
    ap.add_argument("--cap", type=int, help="most trials replayed per seed in part 2 (default: the whole space)")
    ap.add_argument("--configs", default="edge,server")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--progress", action="store_true", help="show the tuners' progress bars")
    ap.add_argument("--skip-tuned", action="store_true", help="part 2 only")
    ap.add_argument("--skip-exhaustive", action="store_true", help="part 1 only")
    ap.add_argument("--exhaustive-records", help="JSON-lines file caching part 2's exhaustive measurement")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with LocalRunner(args.workers) as runner:
        if not args.skip_tuned:
            tuned_vs_heuristic(args, runner)
        if not args.skip_exhaustive:
            exhaustive_study(args, runner)
    print(f"\n(total {time.perf_counter() - t0:.0f} s on {args.workers} worker processes)")


if __name__ == "__main__":
    main()
