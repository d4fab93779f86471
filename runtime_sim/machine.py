"""The event-driven engine: four decoupled units, dependency tokens, one DRAM channel.

Program order feeds one in-order queue per unit (LOAD, FILTER, ATTEND, STORE); header ``SETR``s set the
registers. The engine repeatedly starts the unit instruction that can start earliest: a unit is free
when its previous instruction ends; a ``WAIT`` additionally needs its token's matching ``SIGNAL``
(tokens have one producer and one consumer unit, so the k-th wait takes the k-th signal); a DMA also
needs the DRAM channel, which moves one transfer at a time. Every cycle a unit is not busy before an
instruction starts is a stall attributed to what it waited for. Instructions execute functionally in
that same start order, so a program with a missing dependency reads what a real machine would read.

There is no per-cycle loop: the work is proportional to the instruction count, and the result is
deterministic.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..isa.config import BUFFERS, HardwareConfig
from ..isa.errors import ConfigError
from ..isa.instructions import NUM_TOKENS, Reg, Unit
from ..isa.program import Program
from .energy import energy_breakdown
from .profile import SparsityProfile
from .semantics import HANDLERS
from .state import Dram, MachineState
from .traps import Deadlock, IllegalInstruction, InstructionBudgetExceeded, SimulatorTrap
from .work import compute_cycles, dram_transfer_cycles

DEFAULT_BUDGET = 5_000_000


@dataclass
class SimResult:
    """What a run produced: ``stats`` (a plain dict, see :func:`Simulator.run`), the DRAM after the run
    (full mode), the trace events and captured masks if asked for, and the final machine state."""

    stats: dict
    dram: Dram | None = None
    events: list | None = None
    captured: dict | None = field(default=None, repr=False)
    state: MachineState | None = field(default=None, repr=False)  # final architectural state

    @property
    def cycles(self) -> int:
        return self.stats["cycles"]


class _Run:
    """Per-run context handed to the instruction handlers."""

    def __init__(self, cfg, state, profile, capture_shape):
        self.cfg = cfg
        self.state = state
        self.profile = profile
        self.functional = profile is None
        self.k_views: dict = {}  # decoded K views, see semantics._k_view
        self.candidates = 0
        self.kept = defaultdict(int)  # round -> kept pairs
        self.by_head = defaultdict(lambda: defaultdict(int))  # round -> head slot -> pairs (round 0: candidates)
        self.captured = None
        if capture_shape is not None:
            self.captured = defaultdict(lambda: np.zeros(capture_shape, bool))

    def record_bits(self, round_index: int, head: int, q0: int, k0: int, bits: np.ndarray) -> None:
        n = int(bits.sum())
        if round_index == 0:
            self.candidates += n
        else:
            self.kept[round_index] += n
        self.by_head[round_index][head] += n
        if self.captured is not None:
            rows, keys = bits.shape
            self.captured[round_index][head, q0:q0 + rows, k0:k0 + keys] = bits


class Simulator:
    """Executes Energon programs on one hardware configuration."""

    def __init__(self, cfg: HardwareConfig, budget: int = DEFAULT_BUDGET):
        self.cfg = cfg
        self.budget = budget

    # -- program checks -------------------------------------------------------------------------
    def _check_program(self, program: Program) -> None:
        if program.config_fingerprint != self.cfg.fingerprint:
            raise ConfigError(f"program was built for config {program.config_name!r}; this simulator runs "
                              f"{self.cfg.name!r}")
        code = program.code
        if len(code) > self.budget:
            raise InstructionBudgetExceeded(f"program has {len(code)} instructions; the budget is {self.budget} "
                                            f"(Simulator(budget=...))")
        if not code or code[-1].op.mnemonic != "HALT":
            raise IllegalInstruction("program does not end with HALT", len(code))
        producer: dict[int, Unit] = {}
        consumer: dict[int, Unit] = {}
        in_header = True
        for pc, ins in enumerate(code):
            name = ins.op.mnemonic
            if name == "HALT" and pc != len(code) - 1:
                raise IllegalInstruction("HALT before the end of the program", pc, ins)
            if name == "SETR":
                if not in_header:
                    raise IllegalInstruction("SETR after the first unit instruction; registers are set in "
                                             "the program header", pc, ins)
                continue
            in_header = False
            if name in ("WAIT", "SIGNAL"):
                table = producer if name == "SIGNAL" else consumer
                unit, token = Unit(ins.unit), ins.token
                if table.setdefault(token, unit) != unit:
                    raise IllegalInstruction(f"token {token} is {name.lower()}ed by both {table[token].label} "
                                             f"and {unit.label}; a token has one producer and one consumer",
                                             pc, ins)
        for token in producer.keys() & consumer.keys():
            if producer[token] == consumer[token]:
                raise IllegalInstruction(f"token {token} is signalled and awaited by the same unit "
                                         f"({producer[token].label})", None)

    def _apply_header(self, program: Program, state: MachineState) -> int:
        pc = 0
        for pc, ins in enumerate(program.code):  # noqa: B007 - pc is the first unit instruction
            if ins.op.mnemonic != "SETR":
                break
            value = ins.value
            if ins.reg == Reg.CAUSAL_SHIFT and value >= 1 << 31:
                value -= 1 << 32
            state.regs[Reg(ins.reg)] = value
        d = state.regs[Reg.HEAD_DIM]
        if not (8 <= d <= self.cfg.max_head_dim and d % 8 == 0):
            raise IllegalInstruction(f"HEAD_DIM = {d}: the datapath takes multiples of 8 up to "
                                     f"{self.cfg.max_head_dim}", pc)
        for reg in (Reg.SEQ_Q, Reg.SEQ_K):
            if not 1 <= state.regs[reg] <= 65535:
                raise IllegalInstruction(f"{reg.name} = {state.regs[reg]} must be in 1..65535", pc)
        return pc

    # -- the run --------------------------------------------------------------------------------
    def run(self, program: Program, dram: Dram | np.ndarray | None = None, *,
            profile: SparsityProfile | None = None, trace: bool = False, capture: bool = False) -> SimResult:
        """Run ``program``. Full mode needs the DRAM image laid out as the memory map says (see
        :mod:`.driver`); timing-only mode takes a :class:`SparsityProfile` instead and skips all
        arithmetic, giving the same cycles. ``capture`` records the candidate/kept bits of every
        round as bool [heads, SEQ_Q, SEQ_K] arrays."""
        cfg = self.cfg
        self._check_program(program)
        if profile is None and dram is None:
            raise ConfigError("a full run needs a DRAM image; pass profile=... for a timing-only run")
        if not isinstance(dram, Dram):
            dram = Dram(cfg, dram)
        state = MachineState(cfg, dram)
        first = self._apply_header(program, state)
        heads = max((i.head for i in program.code if "head" in i.op.field_names), default=0) + 1
        shape = (heads, state.regs[Reg.SEQ_Q], state.regs[Reg.SEQ_K]) if capture else None
        run = _Run(cfg, state, profile, shape)

        code = program.code
        args = [ins.as_dict() for ins in code]
        names = [ins.op.mnemonic for ins in code]
        tokens = [a.get("token", -1) for a in args]
        units = [ins.unit for ins in code]
        queues: dict[Unit, list[int]] = {u: [] for u in Unit}
        for pc in range(first, len(code) - 1):
            queues[units[pc]].append(pc)

        free = {u: 0 for u in Unit}  # when each unit's previous instruction ends
        head_of = {u: 0 for u in Unit}
        signals: dict[int, list[int]] = defaultdict(list)
        taken = [0] * NUM_TOKENS
        producer = {i.token: Unit(i.unit) for i in code if i.op.mnemonic == "SIGNAL"}
        dram_free = 0
        busy = {u: 0 for u in Unit}
        stalls = {u: defaultdict(int) for u in Unit}
        counts = {u: 0 for u in Unit}
        totals = _Totals()
        events = [] if trace else None
        labels = program.labels

        remaining = sum(len(q) for q in queues.values())
        while remaining:
            best = None
            for u in Unit:
                if head_of[u] == len(queues[u]):
                    continue
                pc = queues[u][head_of[u]]
                start = free[u]
                if names[pc] == "WAIT":
                    token = tokens[pc]
                    if taken[token] >= len(signals[token]):
                        continue  # blocked until its producer signals
                    start = max(start, signals[token][taken[token]])
                if best is None or start < best[0]:
                    best = (start, u, pc)
            if best is None:
                raise self._deadlock(code, queues, head_of, taken, signals)
            start, u, pc = best
            name = names[pc]
            head_of[u] += 1
            remaining -= 1
            counts[u] += 1
            if name == "WAIT":
                taken[tokens[pc]] += 1
                if start > free[u]:
                    stalls[u][f"wait:{producer[tokens[pc]].label}"] += start - free[u]
                free[u] = start
                continue
            if name == "SIGNAL":
                signals[tokens[pc]].append(start)
                continue
            try:
                work = HANDLERS[name](run, args[pc], pc, code[pc])
            except SimulatorTrap as trap:
                if trap.instruction is not None:
                    raise
                raise type(trap)(trap.detail, pc, code[pc]) from None  # name the faulting instruction
            if u in (Unit.LOAD, Unit.STORE):
                transfer = dram_transfer_cycles(work, cfg)
                begin = max(start + cfg.dram_latency_cycles, dram_free)
                if begin > start + cfg.dram_latency_cycles:
                    stalls[u]["dram:contention"] += begin - start - cfg.dram_latency_cycles
                end = math.ceil(begin + transfer)
                dram_free = end
                busy[u] += end - start - (begin - start - cfg.dram_latency_cycles)
            else:
                end = start + compute_cycles(u, work, cfg)
                busy[u] += end - start
            totals.add(work, program)
            free[u] = end
            if events is not None:
                events.append((u, pc, name, start, end, labels[pc] if labels else ""))

        cycles = max(free.values())
        stats = totals.stats(cfg, cycles, busy, stalls, counts, run)
        stats["instructions"] = len(code)
        return SimResult(stats=stats, dram=dram if run.functional else None, events=events,
                         captured=dict(run.captured) if run.captured is not None else None, state=state)

    @staticmethod
    def _deadlock(code, queues, head_of, taken, signals) -> Deadlock:
        blocked = []
        first_pc = None
        for u in Unit:
            if head_of[u] < len(queues[u]):
                pc = queues[u][head_of[u]]
                first_pc = pc if first_pc is None else min(first_pc, pc)
                t = code[pc].token
                blocked.append(f"{u.label} at pc {pc} waits on token {t} "
                               f"({len(signals[t])} signal(s) sent, {taken[t]} taken)")
        return Deadlock("no unit can proceed: " + "; ".join(blocked), first_pc, code[first_pc])


class _Totals:
    """Accumulates action counts over a run."""

    def __init__(self):
        self.dram_read = defaultdict(int)
        self.dram_write = defaultdict(int)
        self.segments = 0
        self.sram = {b: {"read": 0, "write": 0} for b in BUFFERS}
        self.fu_macs = defaultdict(int)
        self.fu_passes = 0
        self.au_macs = 0
        self.exps = 0
        self.compares = 0
        self.norms = 0
        self._bounds = None  # the program's region bounds, as arrays

    def add(self, work, program: Program) -> None:
        if self._bounds is None:
            starts, ends, names = program.memory_map.bounds
            # index -1 (below every region) hits the sentinel 0: unmapped
            self._bounds = (np.asarray(starts), np.asarray(ends + [0]), names)
        starts, ends, names = self._bounds
        for addrs, nbytes, is_write in work.segments:
            at = np.searchsorted(starts, addrs, side="right") - 1
            at = np.where(addrs < ends[at], at, -1)
            target = self.dram_write if is_write else self.dram_read
            for i in np.unique(at).tolist():
                target[names[i] if i >= 0 else "unmapped"] += int(nbytes[at == i].sum())
            self.segments += addrs.size
        for b, n in work.sram_read.items():
            self.sram[b]["read"] += n
        for b, n in work.sram_write.items():
            self.sram[b]["write"] += n
        if work.fu_macs:
            self.fu_macs[work.fu_precision] += work.fu_macs
            self.fu_passes += work.fu_macs * work.fu_passes
        self.au_macs += work.au_macs
        self.exps += work.exps
        self.compares += work.compares
        self.norms += work.norms

    def stats(self, cfg, cycles, busy, stalls, counts, run) -> dict:
        stats = {
            "config": cfg.name,
            "cycles": int(cycles),
            "time_us": cycles / cfg.clock_ghz / 1e3,
            "units": {u.label: {"instructions": counts[u], "busy": int(busy[u]),
                                "stall": {k: int(v) for k, v in sorted(stalls[u].items())},
                                "utilization": busy[u] / cycles if cycles else 0.0} for u in Unit},
            "dram_bytes": {"read": dict(self.dram_read), "write": dict(self.dram_write),
                           "read_total": sum(self.dram_read.values()),
                           "write_total": sum(self.dram_write.values())},
            "dram_segments": self.segments,
            "sram_bytes": self.sram,
            "macs": {**{f"fu_{k}": v for k, v in sorted(self.fu_macs.items())}, "au_int16": self.au_macs},
            "fu_mac_passes": self.fu_passes,
            "exps": self.exps,
            "compares": self.compares,
            "norms": self.norms,
            "candidates": run.candidates,
            "kept": [run.kept[r] for r in sorted(run.kept)],
        }
        stats["kept_ratio"] = [k / run.candidates if run.candidates else 0.0 for k in stats["kept"]]
        heads = 1 + max((h for counts in run.by_head.values() for h in counts), default=-1)
        cand = [run.by_head[0][h] for h in range(heads)]
        stats["kept_ratio_by_head"] = [[run.by_head[r][h] / cand[h] if cand[h] else 0.0 for h in range(heads)]
                                       for r in sorted(run.kept)]
        dram_total = stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]
        stats["dram_utilization"] = dram_total / (cycles * cfg.dram_bytes_per_cycle) if cycles else 0.0
        stats["energy_pj"] = energy_breakdown(stats, cfg)
        return stats
