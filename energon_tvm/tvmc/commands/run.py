"""``tvmc run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ...isa.numerics import POLICIES
from ..errors import TVMCError
from ..main import command


def add_arguments(p) -> None:
    p.add_argument("package", help="package written by tvmc compile")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-i", "--inputs", help=".npz with one array per model input; a data set: an .npz whose "
                     "arrays carry one more leading (sample) axis, or a folder of .npz files (run in name order)")
    src.add_argument("--fill-mode", default="random", choices=["zeros", "ones", "random"],
                     help="fill inputs when no --inputs is given (default random)")
    p.add_argument("-o", "--outputs", help="write the outputs to this .npz")
    p.add_argument("--print-time", action="store_true", help="print the host wall time of the --repeat "
                   "measurements: mean, median, max, min, std in ms")
    p.add_argument("--number", type=int, default=1, help="runs per measurement; a measurement is their mean (1)")
    p.add_argument("--repeat", type=int, default=1, help="measurements (1); the package runs number x repeat "
                   "times, outputs and statistics from the first run")
    p.add_argument("--profile", action="store_true", help="print simulated cycles, DRAM, energy, kept ratios")
    p.add_argument("--print-top", type=int, metavar="N", help="print the N slowest accelerator calls: cycles, "
                   "their lower bound, what binds it, kept ratio")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of the accelerator (JSON)")
    p.add_argument("--report", help="write a self-contained HTML report")
    p.add_argument("--reference", help=".npz of reference outputs (e.g. a dense run) to compare against")
    p.add_argument("--backend", default="simulator", choices=["simulator", "timing", "reference"],
                   help="how offloaded calls run: simulator (default): the program on the full simulator, its own "
                   "bit-exact outputs, cycles, DRAM, energy and traces; timing: the numpy reference's outputs and "
                   "kept sets with the machine's cycles, DRAM and energy from a timing-only run on the reference's "
                   "sparsity (the same figures, faster; a call whose program and kept sets equal an earlier call's "
                   "takes its figures without simulating again); reference: outputs and kept ratios only, no machine "
                   "figures (fastest)")
    p.add_argument("--dask-scheduler", metavar="ADDRESS", help="with a data set: run its samples on the Dask "
                   "cluster at ADDRESS (tcp://HOST:PORT; workers need energon-tvm installed); results in input order")
    p.add_argument("--seed", type=int, default=0, help="seed of --fill-mode random")
    p.add_argument("--memory-budget", default="8GiB", help="refuse, before running, a package that needs more "
                   "memory than this (inputs, outputs and the largest call's simulated DRAM; default 8GiB)")
    p.add_argument("--package-key", metavar="FILE", help="run only packages signed with this key (hex, in FILE); "
                   "default: $ENERGON_PACKAGE_KEY_FILE or $ENERGON_PACKAGE_KEY. A package is native code: "
                   "run only packages you trust (docs/packages.md)")


def _against(bound, cycles) -> str:
    """Simulated cycles over the lower bound, and what binds it."""
    return f"{'n/a':>8} {'':<9}" if bound is None else f"{bound.ratio(cycles):>7.2f}x {bound.binds:<9}"


#: the width of the policy column of --profile and --print-top (the longest policy name)
POLICY_WIDTH = max(len(p) for p in POLICIES)


def _policies(result) -> str:
    """The policy of every call, for the totals row: the one name, or ``mixed``."""
    names = {c.workload.params.policy for c in result.calls}
    return names.pop() if len(names) == 1 else "mixed" if names else "-"


def _profile_lines(result) -> list[str]:
    from ..report_html import bound_total, call_bounds, energy_components, kept_text

    if result.calls and not any(c.stats.machine for c in result.calls):  # the reference backend
        lines = [f"{'call':>4}  {'site':<28} {'policy':<{POLICY_WIDTH}}  kept ratio per round"]
        for i, call in enumerate(result.calls):
            lines.append(f"{i:>4}  {call.site[:28]:<28} {call.workload.params.policy:<{POLICY_WIDTH}}  "
                         f"{kept_text(call.stats.get('kept_ratio', []))}")
        lines.append(f"{'all':>4}  {len(result.calls)} call(s){'':<19} {_policies(result):<{POLICY_WIDTH}}  "
                     f"{kept_text(result.totals()['kept_ratio'])}")
        return lines + ["no machine figures on the reference backend (use --backend timing for cycles, DRAM "
                        "and energy)"]
    bounds = call_bounds(result)
    lines = [f"{'call':>4}  {'site':<28} {'cycles':>12} {'DRAM KiB':>10} {'energy uJ':>10} {'x bound':>8} "
             f"{'binds':<9} {'policy':<{POLICY_WIDTH}}  kept ratio per round"]
    for i, (call, bound) in enumerate(zip(result.calls, bounds)):
        s = call.stats
        dram = (s["dram_bytes"]["read_total"] + s["dram_bytes"]["write_total"]) / 1024
        lines.append(f"{i:>4}  {call.site[:28]:<28} {s['cycles']:>12,} {dram:>10.1f} "
                     f"{s['energy_pj']['total'] / 1e6:>10.3f} {_against(bound, s['cycles'])} "
                     f"{call.workload.params.policy:<{POLICY_WIDTH}}  {kept_text(s.get('kept_ratio', []))}")
    t = result.totals()
    lines.append(f"{'all':>4}  {t['calls']} call(s){'':<19} {t['cycles']:>12,} {t['dram_bytes'] / 1024:>10.1f} "
                 f"{t['energy_pj'] / 1e6:>10.3f} {_against(bound_total(bounds), t['cycles'])} "
                 f"{_policies(result):<{POLICY_WIDTH}}  {kept_text(t['kept_ratio'])}")
    parts = energy_components(c.stats for c in result.calls)
    if parts:
        total = sum(v for _, v in parts)
        lines.append("energy by component, uJ: " + ", ".join(
            f"{label} {v:.3f} ({v / total:.0%})" for label, v in parts))
    inference_bound = bound_total(bounds)
    if inference_bound is not None and inference_bound.energy_pj:
        lines.append(f"energy {t['energy_pj'] / 1e6:.3f} uJ, {inference_bound.energy_ratio(t['energy_pj']):.2f}x "
                     f"its lower bound of {inference_bound.energy_pj / 1e6:.3f} uJ")
    if any(b is not None for b in bounds):
        lines.append("x bound: simulated cycles over the fewest any schedule could take on this machine with the "
                     "kept counts of the run; the energy bound likewise the least energy (docs/scheduler.md, "
                     "Lower bounds)")
    return lines


def _top_lines(result, n: int) -> list[str]:
    """The ``n`` slowest offloaded calls of the first run, slowest first."""
    from ..report_html import call_bounds, kept_text

    if not result.calls:
        return ["--print-top: the package offloads no call; everything ran on the host"]
    bounds = call_bounds(result)
    order = sorted(range(len(result.calls)), key=lambda i: -result.calls[i].stats["cycles"])[:n]
    lines = [f"the {len(order)} slowest of {len(result.calls)} accelerator call(s):",
             f"{'rank':>4} {'call':>4}  {'site':<28} {'cycles':>12} {'x bound':>8} {'binds':<9} "
             f"{'policy':<{POLICY_WIDTH}}  kept ratio per round"]
    for rank, i in enumerate(order, 1):
        call = result.calls[i]
        cycles = call.stats["cycles"]
        lines.append(f"{rank:>4} {i:>4}  {call.site[:28]:<28} {cycles:>12,} {_against(bounds[i], cycles)} "
                     f"{call.workload.params.policy:<{POLICY_WIDTH}}  {kept_text(call.stats.get('kept_ratio', []))}")
    return lines


def _time_lines(result) -> list[str]:
    from ..runner import time_summary

    t = time_summary(result.wall_seconds)
    return [f"host wall time: {len(result.wall_seconds)} measurement(s) of {result.number} run(s) each",
            f"{'mean (ms)':>10} {'median (ms)':>12} {'max (ms)':>10} {'min (ms)':>10} {'std (ms)':>10}",
            f"{t['mean']:>10.2f} {t['median']:>12.2f} {t['max']:>10.2f} {t['min']:>10.2f} {t['std']:>10.2f}"]


def load_reference(reference_path) -> dict[str, np.ndarray]:
    """The arrays of a ``--reference`` .npz (never unpickled); a missing or unreadable file is one line."""
    from ..errors import open_user_file

    f = open_user_file(reference_path, "--reference file")
    try:
        with f, np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as err:  # BadZipFile, a pickled member (ValueError), a truncated file...
        raise TVMCError(f"--reference {reference_path}: not a readable .npz of plain arrays: {type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0]}") from None


def compare(outputs: dict, reference) -> dict:
    """Per output: max abs error and cosine similarity against the reference (an .npz path or its arrays)."""
    ref = reference if isinstance(reference, dict) else load_reference(reference)
    reference_path = "" if isinstance(reference, dict) else f" {reference}"
    out = {}
    for name, value in outputs.items():
        if name not in ref:
            raise TVMCError(f"--reference{reference_path} has no output {name!r}; it has {', '.join(ref) or 'none'}")
        if ref[name].shape != value.shape:
            raise TVMCError(f"--reference output {name!r} has shape {list(ref[name].shape)}, the run produced "
                            f"{list(value.shape)}")
        a, b = value.astype(np.float64).ravel(), ref[name].astype(np.float64).ravel()
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        out[name] = {"max_abs_error": float(np.max(np.abs(a - b))) if a.size else 0.0,
                     "cosine": float(a @ b / denom) if denom else 1.0}
    return out


@command("run", "run a compiled package with its attention on the simulated accelerator")(add_arguments)
def run(args) -> int:
    import io

    from ..errors import open_user_file
    from ..package import atomic_write, check_output, package_key
    from ..runner import check_repetitions, parse_bytes, run_package

    # every option is checked before the package is read, and every file is rendered before any is
    # written: a run that fails leaves no file behind
    budget = parse_bytes(args.memory_budget)
    if args.seed < 0:
        raise TVMCError(f"--seed {args.seed}: must be a non-negative integer")
    check_repetitions(args.number, args.repeat)
    if args.print_top is not None and args.print_top < 1:
        raise TVMCError(f"--print-top {args.print_top}: must be at least 1")
    if args.backend == "reference":
        for attr, option in (("print_top", "--print-top"), ("trace", "--trace")):
            if getattr(args, attr):
                raise TVMCError(f"{option} needs machine figures, which the reference backend does not compute: "
                                f"use --backend simulator or timing")
    outputs = {option: getattr(args, option) for option in ("outputs", "trace", "report") if getattr(args, option)}
    for option, path in outputs.items():
        check_output(path, f"--{option}")
    if len({str(Path(p).resolve()) for p in outputs.values()}) < len(outputs):
        raise TVMCError("--outputs, --trace and --report name the same file: give each its own")
    key = package_key(args.package_key)
    if args.inputs and not Path(args.inputs).is_dir():
        open_user_file(args.inputs, "inputs file").close()
    if args.inputs and _is_dataset(args.package, args.inputs, key, budget):
        return _run_dataset(args, key, budget)
    if args.dask_scheduler:
        raise TVMCError("--dask-scheduler spreads a data set's samples; -i gives one set of inputs here (a data "
                        "set is an .npz whose arrays carry a leading sample axis, or a folder of .npz files)")
    reference = load_reference(args.reference) if args.reference else None
    result = run_package(args.package, inputs=args.inputs, fill_mode=args.fill_mode, repeat=args.repeat,
                         number=args.number, trace=bool(args.trace), seed=args.seed, key=key,
                         memory_budget=budget, backend=args.backend)
    accuracy = compare(result.outputs, reference) if reference is not None else None
    files: dict[str, bytes] = {}
    if args.outputs:
        buffer = io.BytesIO()
        np.savez(buffer, **result.outputs)
        files[args.outputs] = buffer.getvalue()
    if args.trace:
        from ..trace import merged_trace

        files[args.trace] = json.dumps(merged_trace(result)).encode()
    if args.report:
        from ..report_html import html_report

        files[args.report] = html_report(result, accuracy).encode()
    for path, data in files.items():
        atomic_write(path, data)
        print(f"wrote {path}", file=sys.stderr)
    if args.print_time:
        print("\n".join(_time_lines(result)))
    if args.profile:
        print("\n".join(_profile_lines(result)))
    if args.print_top:
        print("\n".join(_top_lines(result, args.print_top)))
    if accuracy:
        for name, acc in accuracy.items():
            print(f"{name}: cosine {acc['cosine']:.6f}, max abs error {acc['max_abs_error']:.3g} vs reference")
    if not (args.profile or args.print_time or args.outputs or args.print_top) and args.backend == "reference":
        from ..report_html import kept_text

        print(f"ran {Path(args.package).name} on the reference backend: {len(result.calls)} offloaded call(s), kept "
              f"ratio per round {kept_text(result.totals()['kept_ratio'])} (no machine figures: use --backend timing "
              f"for them); outputs " + ", ".join(f"{k}{list(v.shape)}" for k, v in result.outputs.items()))
    elif not (args.profile or args.print_time or args.outputs or args.print_top):
        t = result.totals()
        print(f"ran {Path(args.package).name}: {t['calls']} offloaded call(s), {t['cycles']:,} simulated cycles, "
              f"{t['energy_pj'] / 1e6:.2f} uJ; outputs " + ", ".join(f"{k}{list(v.shape)}"
                                                                      for k, v in result.outputs.items()))
    return 0


def _is_dataset(package, inputs, key, budget) -> bool:
    """Whether ``-i`` names a data set: a folder, or an .npz whose arrays carry a sample axis (read
    against the package's manifest, before its library is loaded)."""
    if Path(inputs).is_dir():
        return True
    from ..package import read_package
    from ..runner import _read_npz

    specs = read_package(package, key=key).manifest["inputs"]
    arrays = _read_npz(inputs, specs, samples=True, max_bytes=budget)
    return any(arr.ndim > len(s["shape"]) for s, arr in zip(specs, (arrays[s["name"]] for s in specs)))


#: options that describe one run, refused with a data set
_SINGLE_RUN = (("trace", "--trace"), ("report", "--report"), ("reference", "--reference"),
               ("print_top", "--print-top"), ("print_time", "--print-time"))


def dataset_lines(result, policies: dict | None = None) -> list[str]:
    """--profile of a data set: mean / p50 / p95 cycles, energy and DRAM per inference, and the mean
    final kept ratio of each offloaded call, beside its selection policy (``policies``: site -> policy
    name, from the package's manifest)."""
    a = result.aggregates()
    rate = result.count / result.wall_seconds if result.wall_seconds else float("inf")
    lines = [f"{result.count} input(s) on the {result.backend} backend in {result.wall_seconds:.2f} s "
             f"({rate:.2f} inputs/s)"]
    if result.backend == "timing":
        calls = result.timing_simulated + result.timing_cached
        lines.append(f"timing runs: {result.timing_simulated:,} of {calls:,} call(s) simulated, "
                     f"{result.timing_cached:,} took an earlier call's figures (the same program and kept sets)")
    if result.backend == "reference":
        lines.append("per inference: no machine figures on the reference backend (use --backend timing)")
    else:
        lines.append(f"{'per inference':<16} {'mean':>14} {'p50':>14} {'p95':>14}")
        for key, label, scale in (("cycles", "cycles", 1), ("energy_pj", "energy uJ", 1e6),
                                  ("dram_bytes", "DRAM KiB", 1024)):
            v = a[key]
            lines.append(f"{label:<16} {v['mean'] / scale:>14,.3f} {v['p50'] / scale:>14,.3f} "
                         f"{v['p95'] / scale:>14,.3f}")
    policies = policies or {}
    lines.append(f"{'call':>4}  {'site':<28} {'policy':<{POLICY_WIDTH}}  mean final kept ratio")
    for i, (site, r) in enumerate(zip(result.sites, a["kept_ratio_mean"])):
        lines.append(f"{i:>4}  {site[:28]:<28} {policies.get(site, '?'):<{POLICY_WIDTH}}  {r:.4f}")
    return lines


def manifest_policies(manifest: dict) -> dict[str, str]:
    """Site -> the selection policy of its call, from a package's manifest."""
    from ...isa.numerics import MPMRFParams

    return {c["site"]: MPMRFParams.from_dict(c["workload"]["params"]).policy for c in manifest["calls"]}


def _run_dataset(args, key, budget) -> int:
    import io

    from ..package import atomic_write
    from ..runner import run_dataset

    for attr, option in _SINGLE_RUN:
        if getattr(args, attr):
            raise TVMCError(f"{option} describes one run; with a data set (-i {args.inputs}) use --profile and -o")
    if args.number != 1 or args.repeat != 1:
        raise TVMCError(f"--number {args.number} --repeat {args.repeat}: a data set runs each sample once")
    result = run_dataset(args.package, args.inputs, backend=args.backend, key=key, memory_budget=budget,
                         progress=True, dask_scheduler=args.dask_scheduler)
    if args.outputs:
        buffer = io.BytesIO()
        np.savez(buffer, **result.outputs)
        atomic_write(args.outputs, buffer.getvalue())
        print(f"wrote {args.outputs}", file=sys.stderr)
    if args.profile:
        from ..package import read_package

        print("\n".join(dataset_lines(result, manifest_policies(read_package(args.package, key=key).manifest))))
    elif not args.outputs:
        a = result.aggregates()
        print(f"ran {Path(args.package).name} on {result.count} input(s) ({args.backend} backend): mean "
              f"{a['cycles']['mean']:,.0f} simulated cycles and {a['energy_pj']['mean'] / 1e6:.2f} uJ per inference; "
              f"outputs " + ", ".join(f"{k}{list(v.shape)}" for k, v in result.outputs.items()))
    return 0
