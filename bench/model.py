"""The benchmark suite on the real models: all-MiniLM-L6-v2 (seq_len 128) end to end, and the host build
of it and of a ViT-S/16-shaped model against onnxruntime.

    python bench/model.py [--sentences 4] [--out out] [--host-db DB_DIR] [--repeat 10] [--threads N]
                          [--skip-simulation | --skip-host] [--dataset 1000]

Prints, in one run:
1. host ms per inference, side by side: onnxruntime, the TVM host build (target llvm) for generic
   x86-64, for the compiling CPU's x86-64 level (the default build), with ``--target-llvm-fast-math on``
   (TVM's approximations of exp / erf / tanh / GELU / softmax; the largest output difference to the
   exact build beside it, and onnxruntime's, whose MLAS kernels approximate exp and erf too) and, with
   ``--host-db``, with the MetaSchedule database ``tvmc tune --host`` wrote (exact, and with fast
   math); for all-MiniLM-L6-v2 at S=128 and ViT-S/16 (224 x 224, random weights of a fixed seed).
   Each figure is the median of ``--repeat`` rounds, each round running every build once in turn
   (common.timed), so a slow spell on a shared machine hits all, with a pause before each run
   (onnxruntime's and TVM's thread pools spin after a run and would slow whichever runs next);
2. compile time of `tvmc compile` (energon, llvm) against an llvm-only build of the same model;
3. host wall time per inference: the llvm-only package, the Energon package (host + simulator), and
   onnxruntime on the same model on this machine;
4. per inference on `edge` and `server`: simulated cycles, energy, DRAM traffic, FU/AU utilisation and
   the speedup over the dense INT16 schedule on the same machine;
5. a design-space sweep of the edge machine (DRAM bandwidth x buffer scale): the speedup over dense,
   from timing-only runs driven by the sparsity the real sentences produced (plot in docs/);
6. end to end on ``--dataset`` inputs (default 1,000 tweets of VADER's corpus, S=128) through the
   main job's package (edge, the default selection): inputs/s of the full simulator, the timing
   backend and the reference backend in one process, interleaved (the data set in ``DATASET_ROUNDS``
   parts, each run on the three backends in turn, so a slow spell of the shared machine hits all), and
   of the timing backend on a 2-worker Dask LocalCluster (whose figures must equal the local run's),
   with the mean cycles and energy each gives;
7. the wall time of ``tvmc run missing.tar`` (a user error answered before TVM is imported).

``--skip-simulation`` prints the first table only (2-6 run the Energon simulator: minutes; the
data-set table about 15 minutes on 2 cores); ``--dataset 0`` skips table 6; ``--skip-host`` leaves
out the first table (the simulated figures do not depend on it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table, timed  # noqa: E402
from energon_tvm.isa.config import load_config  # noqa: E402
from energon_tvm.runtime_sim import Simulator, SparsityProfile  # noqa: E402
from energon_tvm.schedules import default_schedule, dense_workload, emit_program  # noqa: E402

from energon_tvm.demo import SENTENCES  # noqa: E402
from energon_tvm.models import minilm  # noqa: E402
from energon_tvm.tvmc import compile_model, write  # noqa: E402
from energon_tvm.tvmc.runner import PackageSession, bound_per_inference, per_inference  # noqa: E402


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


def host_models(out: Path) -> list[tuple[str, Path, dict]]:
    """(name, ONNX file, inputs) of the host benchmark's models, exported into ``out`` when missing."""
    from energon_tvm.models import vit

    minilm_path, vit_path = out / "minilm-s128.onnx", out / "vit-s16.onnx"
    if not minilm_path.exists():
        minilm.export_onnx(minilm_path, seq_len=128)
    if not vit_path.exists():
        vit.export_onnx(vit_path, vit.VIT_S16, seed=0)
    tokens = minilm.tokenize([SENTENCES[0]], 128)
    return [("all-MiniLM-L6-v2, S=128", minilm_path, {k: tokens[k] for k in minilm.INPUT_NAMES}),
            ("ViT-S/16 (random weights), 224 x 224", vit_path, {vit.INPUT_NAME: vit.random_images(1, vit.VIT_S16)})]


def host_builds(onnx_path: Path, out: Path, stem: str, host_db: str | None) -> dict:
    """The llvm-only packages of one model: generic x86-64, the detected level, and tuned (with
    ``host_db``); name -> (package path, CompileResult)."""
    builds = {"generic": {"mcpu": "x86-64"}, "detected": {}, "fast": {"fast_math": True}}
    if host_db:
        builds["tuned"] = {"host_database": host_db}
        builds["tuned-fast"] = {"host_database": host_db, "fast_math": True}
    packages = {}
    for name, options in builds.items():
        result = compile_model(onnx_path, target="llvm", **options)
        path = out / f"host-{stem}-{name}.tar"
        write(result, path)
        packages[name] = (path, result)
    return packages


#: seconds between two timed runs of the host table: both runtimes' thread pools spin-wait after a run,
#: and on two cores the spinning threads of the one just timed slow the next down 2-3x (measured)
SETTLE = 0.2


def settled_timed(fns: dict, repeat: int) -> dict:
    """:func:`common.timed`'s interleaved rounds (each round runs every function once, in turn) with
    :data:`SETTLE` seconds before each run, untimed: the medians and bests of ``repeat`` rounds."""
    import statistics

    from common import Timing

    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            time.sleep(SETTLE)
            times[name].append(timed({name: fn}, 1)[name].best)
    return {name: Timing(min(t), statistics.median(t), None) for name, t in times.items()}


def host_row(name: str, onnx_path: Path, feeds: dict, stem: str, out: Path, host_db: str | None, repeat: int,
             threads: int) -> list[str]:
    """One model's row of :func:`host_table`: onnxruntime and the TVM host builds timed interleaved."""
    import onnxruntime as ort

    packages = host_builds(onnx_path, out, stem, host_db)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    sessions = {k: PackageSession(path) for k, (path, _) in packages.items()}
    try:
        fns = {"onnxruntime": lambda: session.run(None, feeds)}
        fns.update({k: (lambda s=s: s.run(feeds, collect=False)) for k, s in sessions.items()})
        outputs = {k: fn() for k, fn in fns.items()}  # warm-up: first touch of the weights, the thread pools
        t = settled_timed(fns, repeat)
    finally:
        for s in sessions.values():
            s.close()
    ref = t["onnxruntime"].median

    def cell(k: str) -> str:
        return f"{t[k].median * 1e3:.1f} ({t[k].median / ref:.2f}x)" if k in t else "-"

    tuned = packages["tuned"][1].host_tuning if "tuned" in packages else None
    exact = next(iter(outputs["detected"][0].values()))
    fast_error = float(np.max(np.abs(next(iter(outputs["fast"][0].values())) - exact)))
    if outputs["onnxruntime"][0].shape != exact.shape:
        sys.exit(f"{name}: onnxruntime's first output is {outputs['onnxruntime'][0].shape}, the build's {exact.shape}")
    ort_error = float(np.max(np.abs(outputs["onnxruntime"][0] - exact)))
    return [name, f"{ref * 1e3:.1f} [{ort_error:.1e}]", cell("generic"),
            f"{cell('detected')} [{packages['detected'][1].target.mcpu}]",
            cell("tuned") + (f" ({tuned.tuned} of {tuned.kernels} kernels)" if tuned else ""),
            f"{cell('fast')} [{fast_error:.1e}]", cell("tuned-fast")]


def host_table(out: Path, host_db: str | None, repeat: int, threads: int) -> str:
    """Host ms per inference of onnxruntime and the TVM host builds, per model, measured interleaved."""
    rows = [host_row(name, path, feeds, stem, out, host_db, repeat, threads)
            for (name, path, feeds), stem in zip(host_models(out), ("minilm", "vit"))]
    return table(["model", "onnxruntime ms [max abs diff to exact]", "TVM x86-64 ms (x ort)",
                  "TVM detected level ms (x ort)", "TVM tuned ms (x ort)",
                  "fast-math ms (x ort) [max abs diff to exact]", "tuned + fast-math ms"], rows,
                 f"Host ms per inference, median of {repeat} interleaved rounds, {threads} thread(s) each, "
                 f"{SETTLE:g} s pause before each run "
                 f"(tuned: {host_db or 'no --host-db given'})")


def dataset_inputs(out: Path, n: int) -> Path:
    """The first ``n`` distinct tweets of VADER's tweets corpus as a data set of the MiniLM package's
    inputs (arrays [n, 1, 128])."""
    from energon_tvm.models import corpus

    texts = list(dict.fromkeys(text for text, _ in corpus.fetch_vader_corpus("tweets")))[:n]
    if len(texts) < n:
        sys.exit(f"--dataset {n}: the tweets corpus has {len(texts)} distinct texts")
    tokens = minilm.tokenize(texts, 128)
    path = out / f"dataset-tweets-{n}.npz"
    np.savez(path, **{k: tokens[k][:, None, :] for k in minilm.INPUT_NAMES})
    return path


DATASET_ROUNDS = 5  # parts of the data set the local backends take in turn


def interleaved_runs(package: Path, inputs: Path, backends: tuple[str, ...], rounds: int) -> dict:
    """Each backend's run over the whole data set, made of ``rounds`` parts run on every backend in
    turn (the order rotating from part to part): per backend, one result with the parts' samples in
    order and their wall times summed."""
    from dataclasses import replace

    from energon_tvm.tvmc.runner import run_dataset

    data = np.load(inputs)
    n = data[data.files[0]].shape[0]
    bounds = np.linspace(0, n, rounds + 1).astype(int)
    parts: dict[str, list] = {b: [] for b in backends}
    for r, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        part = inputs.with_name(f"{inputs.stem}-part{r}.npz")
        np.savez(part, **{k: data[k][lo:hi] for k in data.files})
        for backend in backends[r % len(backends):] + backends[:r % len(backends)]:
            parts[backend].append(run_dataset(package, part, backend=backend, progress=True))
        part.unlink()
    merged = {}
    for backend, runs in parts.items():
        first = runs[0]
        merged[backend] = replace(
            first, outputs={k: np.concatenate([x.outputs[k] for x in runs]) for k in first.outputs},
            **{f: np.concatenate([getattr(x, f) for x in runs])
               for f in ("cycles", "energy_pj", "dram_bytes", "kept_ratio")},
            wall_seconds=sum(x.wall_seconds for x in runs), timing_simulated=sum(x.timing_simulated for x in runs),
            timing_cached=sum(x.timing_cached for x in runs))
    return merged


def dataset_table(package: Path, inputs: Path, n: int) -> str:
    """Inputs/s of each backend over the data set (the local ones interleaved), and of the timing
    backend on a 2-worker Dask LocalCluster; the Dask run's figures are checked against the local run's."""
    from distributed import LocalCluster

    from energon_tvm.tvmc.runner import run_dataset

    results = interleaved_runs(package, inputs, ("simulator", "timing", "reference"), DATASET_ROUNDS)
    # each worker process: one core, one TVM thread (the workers inherit the environment when they start)
    with (mock.patch.dict(os.environ, {"TVM_NUM_THREADS": "1"}),
          LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster):
        results["timing, Dask 2 workers"] = run_dataset(package, inputs, backend="timing", progress=True,
                                                       dask_scheduler=cluster.scheduler_address)
    local, spread = results["timing"], results["timing, Dask 2 workers"]
    same = (np.array_equal(local.cycles, spread.cycles) and np.array_equal(local.energy_pj, spread.energy_pj)
            and all(np.array_equal(local.outputs[k], spread.outputs[k]) for k in local.outputs))
    if not same:
        sys.exit("the Dask run's figures or outputs differ from the local timing run's")
    full, timing = results["simulator"], results["timing"]
    if not (np.array_equal(full.cycles, timing.cycles) and np.array_equal(full.energy_pj, timing.energy_pj)):
        sys.exit("the timing backend's cycles or energy differ from the full simulator's")
    rows = []
    for name, r in results.items():
        a = r.aggregates()
        machine = r.backend != "reference"
        cached = f"{r.timing_cached:,} of {r.timing_cached + r.timing_simulated:,}" if r.backend == "timing" else "-"
        rows.append([name, f"{r.count:,}", f"{r.wall_seconds:.0f}", f"{r.count / r.wall_seconds:.2f}",
                     f"{r.count / r.wall_seconds / (full.count / full.wall_seconds):.2f}x",
                     f"{a['cycles']['mean']:,.0f}" if machine else "-",
                     f"{a['cycles']['p95']:,.0f}" if machine else "-",
                     f"{a['energy_pj']['mean'] / 1e6:.2f}" if machine else "-", cached])
    return table(["backend", "inputs", "wall s", "inputs/s", "vs full", "mean cycles", "p95 cycles", "mean uJ",
                  "calls from the timing cache"], rows,
                 f"End to end on {n:,} tweets (all-MiniLM-L6-v2 S=128, edge, default selection; the local backends "
                 f"in {DATASET_ROUNDS} interleaved parts; the Dask run's "
                 f"figures and outputs equal the local timing run's, and the timing run's cycles and energy the "
                 f"full simulator's)")


def missing_file_seconds(repeat: int = 3) -> float:
    """Median wall time of ``tvmc run missing.tar`` in a new process (exit status 1, one line)."""
    import statistics
    import subprocess

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "energon_tvm.tvmc", "run", "missing.tar"], capture_output=True,
                              text=True, timeout=60)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 1 or len(proc.stderr.strip().splitlines()) != 1:
            sys.exit(f"tvmc run missing.tar: exit {proc.returncode}, stderr {proc.stderr!r}")
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--out", default="out")
    ap.add_argument("--plot", default=str(Path(__file__).resolve().parents[1] / "docs" / "design_space.png"))
    ap.add_argument("--host-db", help="a MetaSchedule database folder (tvmc tune --host) for the tuned column")
    ap.add_argument("--repeat", type=int, default=10, help="interleaved rounds of the host table (10)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="threads of onnxruntime and of TVM's runtime in the host table (default: the CPUs)")
    ap.add_argument("--skip-simulation", action="store_true", help="print the host table only")
    ap.add_argument("--skip-host", action="store_true",
                    help="leave out the host table (the simulated figures do not depend on it)")
    ap.add_argument("--dataset", type=int, default=1000, help="inputs of the end-to-end table (1000; 0 skips it)")
    args = ap.parse_args()
    # TVM's runtime sizes its thread pool from this when it starts (by default half the logical CPUs)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_host:
        print(host_table(out, args.host_db, args.repeat, args.threads))
    print(table(["command", "wall s"], [["tvmc run missing.tar (exit 1, one line)", f"{missing_file_seconds():.2f}"]],
                "A user error, answered before TVM is imported (median of 3, new process each)"))
    if args.skip_simulation:
        return
    onnx_path = out / "minilm-s128.onnx"
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
        (bound, binds, bound_pj), (dbound, dbinds, dbound_pj) = (bound_per_inference(r, cfg) for r in (sparse, dense))
        util = {u: np.mean([c.stats["units"][u]["utilization"] for r in sparse for c in r])
                for u in ("filter", "attend")}
        rows.append([machine, f"{cycles:,.0f}", f"{bound:,.0f} ({binds})", f"{cycles / bound:.2f}x",
                     f"{cycles / cfg.clock_ghz / 1e3:.1f}",
                     f"{mp['energy_pj'] / 1e6:.1f}", f"{mp['energy_pj'] / bound_pj:.2f}x",
                     f"{mp['dram_bytes'] / 1e6:.2f}", f"{util['filter']:.0%}",
                     f"{util['attend']:.0%}", f"{mp['kept_ratio'][-1]:.3f}", f"{dcycles:,.0f}",
                     f"{dcycles / dbound:.2f}x ({dbinds})", f"{dn['energy_pj'] / dbound_pj:.2f}x",
                     f"{dcycles / cycles:.2f}x", f"{dbound / bound:.2f}x",
                     f"{mp['energy_pj'] / dn['energy_pj']:.2f}"])
    print(table(["machine", "cycles", "bound (binds)", "x bound", "us", "energy uJ", "x energy bound", "DRAM MB",
                 "FU util", "AU util", "kept ratio", "dense cycles", "dense x bound", "dense x energy bound",
                 "speedup", "bounds allow", "energy vs dense"], rows,
                "Simulated attention per inference (6 layers), default selection, against the lower bounds of the "
                "runs' kept counts (docs/scheduler.md)"))

    bandwidths, scales, grid = design_space(runs["edge"][:1], args.plot)  # one sentence: six layers
    print(table(["buffers \\ GB/s"] + [f"{b:g}" for b in bandwidths],
                [[f"{s:g}x"] + [f"{v:.2f}x" for v in grid[i]] for i, s in enumerate(scales)],
                f"Design space: MP-MRF speedup over dense on edge variants (plot: {args.plot})"))
    if args.dataset:
        print(dataset_table(packages["edge"], dataset_inputs(out, args.dataset), args.dataset))


if __name__ == "__main__":
    main()
