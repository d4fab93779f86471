"""What ``tvmc inspect`` shows of one program: workload, schedule, buffer use, cycle estimates, code."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..isa.asm import disassemble
from ..isa.config import HardwareConfig
from ..isa.numerics import RULE_VALUE
from ..isa.program import Program
from ..runtime_sim import Simulator, SparsityProfile
from ..schedules import AttentionWorkload, Schedule, buffer_usage, call_bound, check_program
from .target import selection_text


def upper_bound_profile(w: AttentionWorkload) -> SparsityProfile:
    """Every key a candidate (less the causal ones) and every candidate kept in every round: the most
    work the program can do, whatever the data.

    The masks are read-only views, not arrays of heads x Sq x Sk bools (which for the largest workload
    a machine takes are hundreds of GB): all heads share one [Sq, Sk] mask, and the causal one is a
    Toeplitz view of a single row of Sq + Sk - 1 flags (query q, key k reads flag k - q + Sq - 1)."""
    shape = (w.batch * w.heads, w.seq_q, w.seq_k)
    if w.causal:
        flags = np.arange(-(w.seq_q - 1), w.seq_k) <= w.causal_shift  # flag j: key - query = j - (Sq - 1)
        step = flags.strides[0]
        cand = as_strided(flags[w.seq_q - 1:], shape=shape, strides=(0, -step, step), writeable=False)
    else:
        cand = np.broadcast_to(np.True_, shape)
    return SparsityProfile((cand,) * (1 + len(w.params.rounds)))


def describe_program(blob: bytes, cfg: HardwareConfig | None = None, code: bool = True) -> str:
    """The summary (and disassembly) of one program binary, for the hardware config the binary carries;
    ``cfg``, when given, is a check that the binary is for that machine. A program whose metadata names
    a workload or a schedule is checked as an attention program (:func:`check_program`) before anything
    is sized from that metadata."""
    prog = Program.from_bytes(blob, cfg)
    cfg = prog.config
    lines = [f"program: {len(prog.code)} instructions, {len(blob)} bytes, config {cfg.name}"]
    if "workload" in prog.meta or "schedule" in prog.meta:  # else not an attention program: code only
        w = check_program(prog)
        s = Schedule.from_dict(prog.meta["schedule"])
        lines.append(f"workload: B={w.batch} H={w.heads} Sq={w.seq_q} Sk={w.seq_k} D={w.head_dim} mask={w.mask_kind} "
                     f"scale={w.effective_scale:.6g}; policy " + selection_text(w.params))
        lines.append(f"schedule: {s.to_json()}")
        usage = buffer_usage(w, s, cfg)
        lines.append("buffer use: " + ", ".join(f"{b} {n}/{cfg.buffer(b)} B ({n / cfg.buffer(b):.0%})"
                                                for b, n in usage.items()))
        profile = upper_bound_profile(w)
        most = Simulator(cfg).run(prog, profile=profile).stats
        lines.append(f"estimated cycles: at most {most['cycles']:,} ({most['time_us']:.1f} us at "
                     f"{cfg.clock_ghz:g} GHz) when every candidate survives every round; the data decide "
                     f"how far below (tvmc run --profile)")
        floor = call_bound(w, cfg, profile)  # what any schedule on this machine needs for that same work
        dram = most["dram_bytes"]["read_total"] + most["dram_bytes"]["write_total"]
        lines.append(f"lower bound for that work: {floor.cycles:,} cycles ({floor.binds} binds; filter "
                     f"{floor.fu_cycles:,}, attention {floor.au_cycles:,}, DRAM {floor.dram_cycles:,}); this "
                     f"schedule is {floor.format(most['cycles'], dram, most['energy_pj']['total'])}")
    if code:
        lines.append("")
        lines.append(disassemble(prog))
    return "\n".join(lines)


def _value_text(rule: str, value: float) -> str:
    """``alpha 0`` / ``gap 8`` / ``fraction 0.25`` / ``probability 0.01``: a round's value by its name."""
    return f"{RULE_VALUE[rule]} {value:g}"


def selection_lines(manifest: dict) -> list[str]:
    """What a package's calls select by: one line when every call has the same policy and rounds (the
    target's, or per-head values of one policy), else one line per policy with its sites."""
    from ..isa.numerics import MPMRFParams

    calls = manifest["calls"]
    if not calls:
        return [f"selection: {selection_text(MPMRFParams.from_dict(manifest['params']))} (no offloaded call)"]
    by_policy: dict[str, list[str]] = {}
    texts = set()
    for c in calls:
        params = MPMRFParams.from_dict(c["workload"]["params"])
        by_policy.setdefault(params.policy, []).append(c["site"])
        texts.add(selection_text(params))
    if len(texts) == 1:
        return [f"selection: {texts.pop()}, every call"]
    if len(by_policy) == 1:
        return [f"selection: policy {next(iter(by_policy))}, values per call (table below)"]
    return ["selection: policies differ per call"] + [f"  {p}: {', '.join(sites)}" for p, sites in by_policy.items()]


def threshold_rows(manifest: dict, kept_by_site: dict | None = None) -> tuple[list[str], list[list[str]]]:
    """The per layer x head table of a package's thresholds: (header, rows). Every offloaded call's
    rounds, as its workload states them: one row per head when the heads have their own values, one row
    for the layer (head ``all``) otherwise. The kept ratio columns are the calibration's (the manifest's
    ``thresholds`` record) or, per site, ``kept_by_site[site][round][head]`` (a run's) when given."""
    from ..isa.numerics import MPMRFParams

    calibrated = {s["name"]: s for s in (manifest.get("thresholds") or {}).get("sites", [])}
    calls = manifest["calls"]
    n_rounds = max((len(c["workload"]["params"]["rounds"]) for c in calls), default=0)
    header = ["layer", "head"]
    params_of = {c["site"]: MPMRFParams.from_dict(c["workload"]["params"]) for c in calls}
    bits = next((p.rounds for p in params_of.values() if len(p.rounds) == n_rounds), ())
    header += [f"round {r + 1} (Q{b.q_bits}xK{b.k_bits})" for r, b in enumerate(bits)]
    source = kept_by_site if kept_by_site is not None else {n: s["kept_ratio"] for n, s in calibrated.items()}
    with_kept = bool(source)
    if with_kept:
        header += [f"kept r{r + 1}" for r in range(n_rounds)]
    if calibrated and kept_by_site is None:
        header.append("mass")
    rows = []
    for call in calls:
        site, heads = call["site"], int(call["workload"]["heads"])
        params = params_of[site]
        per_head = any(r.head_values is not None for r in params.rounds)
        kept = source.get(site)
        for h in range(heads) if per_head else [None]:
            row = [site, "all" if h is None else str(h)]
            row += [_value_text(r.rule, r.value if h is None else r.values(heads)[h]) for r in params.rounds]
            row += ["-"] * (n_rounds - len(params.rounds))
            if with_kept:
                for r in range(n_rounds):
                    ok = kept is not None and r < len(kept)
                    if ok and h is None:
                        row.append(f"{sum(kept[r]) / len(kept[r]):.3f}" if kept[r] else "n/a")
                    else:
                        row.append(f"{kept[r][h]:.3f}" if ok and h < len(kept[r]) else "n/a")
            if calibrated and kept_by_site is None:
                mass = calibrated.get(site, {}).get("mass_mean")
                row.append("n/a" if not mass else f"{mass[h]:.4f}" if h is not None else f"{min(mass):.4f}")
            rows.append(row)
    return header, rows


def threshold_table(manifest: dict) -> str:
    """:func:`threshold_rows` as aligned text, under a line naming the thresholds file (if any)."""
    header, rows = threshold_rows(manifest)
    thr = manifest.get("thresholds")
    title = ("thresholds: " + (f"from {thr['file']} (rule {thr['rule']}, mass budget {thr['budget']:g}; kept "
                               f"ratio and mass as calibrated)" if thr else "the target's, one set per layer"))
    if not rows:
        return title + "\n  (no offloaded call)"
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([title, fmt(header), *map(fmt, rows)])
