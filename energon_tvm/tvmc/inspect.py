"""What ``tvmc inspect`` shows of one program: workload, schedule, buffer use, cycle estimates, code."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..isa.asm import disassemble
from ..isa.config import HardwareConfig
from ..isa.program import Program
from ..runtime_sim import Simulator, SparsityProfile
from ..schedules import AttentionWorkload, Schedule, buffer_usage, call_bound, check_program


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
                     f"scale={w.effective_scale:.6g}; MP-MRF " + w.params.describe())
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
                     f"schedule is {floor.format(most['cycles'], dram)}")
    if code:
        lines.append("")
        lines.append(disassemble(prog))
    return "\n".join(lines)
