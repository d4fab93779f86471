"""What ``tvmc inspect`` shows of one program: workload, schedule, buffer use, cycle estimates, code."""

from __future__ import annotations

import numpy as np

from ..isa.asm import disassemble
from ..isa.config import HardwareConfig
from ..isa.program import Program
from ..runtime_sim import Simulator, SparsityProfile
from ..schedules import AttentionWorkload, Schedule, buffer_usage


def upper_bound_profile(w: AttentionWorkload) -> SparsityProfile:
    """Every key a candidate (less the causal ones) and every candidate kept in every round: the most
    work the program can do, whatever the data."""
    heads = w.batch * w.heads
    cand = np.ones((heads, w.seq_q, w.seq_k), bool)
    if w.causal:
        cand &= w.causal_keep()[None]
    return SparsityProfile((cand,) * (1 + len(w.params.rounds)))


def describe_program(blob: bytes, cfg: HardwareConfig | None = None, code: bool = True) -> str:
    """The summary (and disassembly) of one program binary, for the hardware config the binary carries;
    ``cfg``, when given, is a check that the binary is for that machine."""
    prog = Program.from_bytes(blob, cfg)
    cfg = prog.config
    lines = [f"program: {len(prog.code)} instructions, {len(blob)} bytes, config {cfg.name}"]
    w = AttentionWorkload.from_dict(prog.meta["workload"]) if "workload" in prog.meta else None
    if w is not None:
        lines.append(f"workload: B={w.batch} H={w.heads} Sq={w.seq_q} Sk={w.seq_k} D={w.head_dim} mask={w.mask_kind} "
                     f"scale={w.effective_scale:.6g}; MP-MRF " + (", ".join(
                         f"Q{r.q_bits}xK{r.k_bits} alpha={r.alpha:g}" for r in w.params.rounds) or "dense"))
    if "schedule" in prog.meta:
        s = Schedule.from_dict(prog.meta["schedule"])
        lines.append(f"schedule: {s.to_json()}")
        if w is not None:
            usage = buffer_usage(w, s, cfg)
            lines.append("buffer use: " + ", ".join(f"{b} {n}/{cfg.buffer(b)} B ({n / cfg.buffer(b):.0%})"
                                                    for b, n in usage.items()))
            bound = Simulator(cfg).run(prog, profile=upper_bound_profile(w)).stats
            lines.append(f"estimated cycles: at most {bound['cycles']:,} ({bound['time_us']:.1f} us at "
                         f"{cfg.clock_ghz:g} GHz) when every candidate survives every round; the data decide "
                         f"how far below (tvmc run --profile)")
    if code:
        lines.append("")
        lines.append(disassemble(prog))
    return "\n".join(lines)
