"""``tvmc run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import TVMCError
from ..main import command


def add_arguments(p) -> None:
    p.add_argument("package", help="package written by tvmc compile")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--inputs", help=".npz with one array per model input")
    src.add_argument("--fill-mode", default="random", choices=["zeros", "ones", "random"],
                     help="fill inputs when no --inputs is given (default random)")
    p.add_argument("--outputs", help="write the outputs to this .npz")
    p.add_argument("--print-time", action="store_true", help="print host wall time per run")
    p.add_argument("--profile", action="store_true", help="print simulated cycles, DRAM, energy, kept ratios")
    p.add_argument("--trace", help="write a Chrome/Perfetto trace of the accelerator (JSON)")
    p.add_argument("--report", help="write a self-contained HTML report")
    p.add_argument("--reference", help=".npz of reference outputs (e.g. a dense run) to compare against")
    p.add_argument("--repeat", type=int, default=1, help="run N times (statistics from the first)")
    p.add_argument("--seed", type=int, default=0, help="seed of --fill-mode random")
    p.add_argument("--memory-budget", default="8GiB", help="refuse, before running, a package that needs more "
                   "memory than this (inputs, outputs and the largest call's simulated DRAM; default 8GiB)")
    p.add_argument("--package-key", metavar="FILE", help="run only packages signed with this key (hex, in FILE); "
                   "default: $ENERGON_PACKAGE_KEY_FILE or $ENERGON_PACKAGE_KEY. A package is native code: "
                   "run only packages you trust (docs/packages.md)")


def _profile_lines(result) -> list[str]:
    from ..report_html import bound_total, call_bounds

    def against(bound, cycles) -> str:  # simulated cycles over the lower bound, and what binds it
        return f"{'n/a':>8} {'':<9}" if bound is None else f"{bound.ratio(cycles):>7.2f}x {bound.binds:<9}"

    bounds = call_bounds(result)
    lines = [f"{'call':>4}  {'site':<28} {'cycles':>12} {'DRAM KB':>10} {'energy uJ':>10} {'x bound':>8} "
             f"{'binds':<9}  kept ratio per round"]
    for i, (call, bound) in enumerate(zip(result.calls, bounds)):
        s = call.stats
        dram = (s["dram_bytes"]["read_total"] + s["dram_bytes"]["write_total"]) / 1024
        kept = " / ".join(f"{r:.3f}" for r in s.get("kept_ratio", [])) or "dense"
        lines.append(f"{i:>4}  {call.site[:28]:<28} {s['cycles']:>12,} {dram:>10.1f} "
                     f"{s['energy_pj']['total'] / 1e6:>10.3f} {against(bound, s['cycles'])}  {kept}")
    t = result.totals()
    kept = " / ".join(f"{r:.3f}" for r in t["kept_ratio"]) or "dense"
    lines.append(f"{'all':>4}  {t['calls']} call(s){'':<19} {t['cycles']:>12,} {t['dram_bytes'] / 1024:>10.1f} "
                 f"{t['energy_pj'] / 1e6:>10.3f} {against(bound_total(bounds), t['cycles'])}  {kept}")
    if any(b is not None for b in bounds):
        lines.append("x bound: simulated cycles over the fewest any schedule could take on this machine with the "
                     "kept counts of the run (docs/scheduler.md, Lower bounds)")
    return lines


def compare(outputs: dict, reference_path) -> dict:
    """Per output: max abs error and cosine similarity against the reference .npz."""
    try:
        with np.load(reference_path, allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise TVMCError(f"--reference {reference_path}: not a readable .npz: {err}") from None
    out = {}
    for name, value in outputs.items():
        if name not in ref:
            raise TVMCError(f"--reference {reference_path} has no output {name!r}; it has {', '.join(ref)}")
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

    from ..package import atomic_write, check_output, package_key
    from ..runner import parse_bytes, run_package

    # what would fail after the run fails before it
    budget = parse_bytes(args.memory_budget)
    if args.seed < 0:
        raise TVMCError(f"--seed {args.seed}: must be a non-negative integer")
    for option in ("outputs", "trace", "report"):
        if getattr(args, option):
            check_output(getattr(args, option), f"--{option}")
    result = run_package(args.package, inputs=args.inputs, fill_mode=args.fill_mode, repeat=args.repeat,
                         trace=bool(args.trace or args.report), seed=args.seed, key=package_key(args.package_key),
                         memory_budget=budget)
    if args.outputs:
        buffer = io.BytesIO()
        np.savez(buffer, **result.outputs)
        atomic_write(args.outputs, buffer.getvalue())
        print(f"wrote {args.outputs}", file=sys.stderr)
    if args.print_time:
        for i, t in enumerate(result.wall_seconds):
            print(f"run {i}: {t * 1e3:.1f} ms host wall time")
    if args.profile:
        print("\n".join(_profile_lines(result)))
    accuracy = compare(result.outputs, args.reference) if args.reference else None
    if accuracy:
        for name, acc in accuracy.items():
            print(f"{name}: cosine {acc['cosine']:.6f}, max abs error {acc['max_abs_error']:.3g} vs reference")
    if args.trace:
        from ..trace import merged_trace

        atomic_write(args.trace, json.dumps(merged_trace(result)).encode())
        print(f"wrote {args.trace}", file=sys.stderr)
    if args.report:
        from ..report_html import html_report

        atomic_write(args.report, html_report(result, accuracy).encode())
        print(f"wrote {args.report}", file=sys.stderr)
    if not (args.profile or args.print_time or args.outputs):
        t = result.totals()
        print(f"ran {Path(args.package).name}: {t['calls']} offloaded call(s), {t['cycles']:,} simulated cycles, "
              f"{t['energy_pj'] / 1e6:.2f} uJ; outputs " + ", ".join(f"{k}{list(v.shape)}"
                                                                      for k, v in result.outputs.items()))
    return 0
