"""The event-driven engine: four decoupled units, dependency tokens, one DRAM channel.

Program order feeds one in-order queue per unit (LOAD, FILTER, ATTEND, STORE); header ``SETR``s set the
registers. The engine repeatedly starts the unit instruction that can start earliest: a unit is free
when its previous instruction ends; a ``WAIT`` additionally needs its token's matching ``SIGNAL``
(tokens have one producer and one consumer unit, so the k-th wait takes the k-th signal). The DMA units
(LOAD, STORE) issue a transfer and go on to the next instruction while it is in flight, up to the
config's ``dram_outstanding_requests`` transfers each: the next one waits for the oldest to complete
when all are taken. A transfer's data leaves DRAM ``dram_latency_cycles`` after its issue, and the one
DRAM channel moves one transfer at a time, in issue order. A DMA unit's ``SIGNAL`` is sent when every
transfer it issued before it has completed, so a consumer never sees a buffer before its data is in.
Every cycle a unit is not busy before an instruction starts is a stall attributed to what it waited
for. Instructions execute functionally in that same start (issue) order, so a program with a missing
dependency reads what a real machine would read.

There is no per-cycle loop: the work is proportional to the instruction count, and the result is
deterministic.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
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
_IS_DMA = tuple(u in (Unit.LOAD, Unit.STORE) for u in Unit)  # per unit: issues DRAM transfers


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
        self.scores: dict = {}  # filter scores by operand identity, see semantics._filter_scores
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


class Decoded:
    """A program in the form the engine runs, built and checked once (:meth:`Simulator.decode`) and
    reusable by every run of that program on that configuration: per pc the mnemonic, fields, unit
    (None for SETR and HALT), handler and awaited token; each unit's queue of pcs; which instructions
    are DRAM transfers; each token's producer unit. ``check(program, decoded)`` runs on the per-pc
    lists before the rest is derived from them. Read-only after construction."""

    def __init__(self, program: Program, cfg: HardwareConfig, check):
        self.program, self.fingerprint = program, cfg.fingerprint
        code = program.code
        self.names, self.args, self.units = [], [], []
        for ins in code:
            op = ins.op
            a = dict(zip(op.field_names, ins.args))
            self.names.append(op.mnemonic)
            self.args.append(a)
            self.units.append(op.unit if op.unit is not None else a.get("unit"))
        check(program, self)
        self.first = next((pc for pc, n in enumerate(self.names) if n != "SETR"), len(code))
        self.handlers = [HANDLERS.get(n) for n in self.names]
        self.wait_token = [a["token"] if n == "WAIT" else -1 for n, a in zip(self.names, self.args)]
        self.queues: list[list[int]] = [[] for _ in Unit]
        for pc in range(self.first, len(code) - 1):
            self.queues[self.units[pc]].append(pc)
        self.is_transfer = [u is not None and _IS_DMA[u] and n not in ("WAIT", "SIGNAL")
                            for n, u in zip(self.names, self.units)]
        self.producer = {a["token"]: Unit(u) for n, a, u in zip(self.names, self.args, self.units) if n == "SIGNAL"}
        self.heads = max((a["head"] for a in self.args if "head" in a), default=0) + 1


class Simulator:
    """Executes Energon programs on one hardware configuration."""

    def __init__(self, cfg: HardwareConfig, budget: int = DEFAULT_BUDGET):
        self.cfg = cfg
        self.budget = budget

    # -- program checks -------------------------------------------------------------------------
    def _check_program(self, program: Program, decoded: Decoded) -> None:
        if program.config_fingerprint != self.cfg.fingerprint:
            raise ConfigError(f"program was built for config {program.config_name!r}; this simulator runs "
                              f"{self.cfg.name!r}")
        code = program.code
        self._check_budget(program)
        if not code or code[-1].op.mnemonic != "HALT":
            raise IllegalInstruction("program does not end with HALT", len(code))
        producer: dict[int, Unit] = {}
        consumer: dict[int, Unit] = {}
        in_header = True
        for pc, (name, a, u) in enumerate(zip(decoded.names, decoded.args, decoded.units)):
            if name == "HALT" and pc != len(code) - 1:
                raise IllegalInstruction("HALT before the end of the program", pc, code[pc])
            if name == "SETR":
                if not in_header:
                    raise IllegalInstruction("SETR after the first unit instruction; registers are set in "
                                             "the program header", pc, code[pc])
                continue
            in_header = False
            if name in ("WAIT", "SIGNAL"):
                table = producer if name == "SIGNAL" else consumer
                unit, token = Unit(u), a["token"]
                if table.setdefault(token, unit) != unit:
                    raise IllegalInstruction(f"token {token} is {name.lower()}ed by both {table[token].label} "
                                             f"and {unit.label}; a token has one producer and one consumer",
                                             pc, code[pc])
        for token in producer.keys() & consumer.keys():
            if producer[token] == consumer[token]:
                raise IllegalInstruction(f"token {token} is signalled and awaited by the same unit "
                                         f"({producer[token].label})", None)

    def _check_budget(self, program: Program) -> None:
        if len(program.code) > self.budget:
            raise InstructionBudgetExceeded(f"program has {len(program.code)} instructions; the budget is "
                                            f"{self.budget} (Simulator(budget=...))")

    def _apply_header(self, program: Program, decoded: Decoded, state: MachineState) -> None:
        """The header's SETRs into the registers, checked; errors name the first unit instruction."""
        pc = decoded.first
        for ins in program.code[:pc]:
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

    def decode(self, program: Program) -> Decoded:
        """``program`` decoded and checked for this simulator's configuration, for :meth:`run`'s
        ``decoded`` (a caller that runs one program many times decodes it once)."""
        return Decoded(program, self.cfg, self._check_program)

    # -- the run --------------------------------------------------------------------------------
    def run(self, program: Program, dram: Dram | np.ndarray | None = None, *,
            profile: SparsityProfile | None = None, trace: bool = False, capture: bool = False,
            decoded: Decoded | None = None) -> SimResult:
        """Run ``program``. Full mode needs the DRAM image laid out as the memory map says (see
        :mod:`.driver`); timing-only mode takes a :class:`SparsityProfile` instead and skips all
        arithmetic, giving the same cycles. ``capture`` records the candidate/kept bits of every
        round as bool [heads, SEQ_Q, SEQ_K] arrays. ``decoded``: :meth:`decode` of this program, made
        earlier (else it is decoded and checked here)."""
        cfg = self.cfg
        if decoded is None:
            decoded = self.decode(program)
        elif decoded.program is not program or decoded.fingerprint != cfg.fingerprint:
            raise ConfigError("decoded= is another program's, or was decoded for another configuration; "
                              "pass Simulator.decode(program) of this simulator")
        else:
            self._check_budget(program)  # this simulator's budget, whichever simulator decoded it
        if profile is None and dram is None:
            raise ConfigError("a full run needs a DRAM image; pass profile=... for a timing-only run")
        if not isinstance(dram, Dram):
            dram = Dram(cfg, dram)
        state = MachineState(cfg, dram, program.memory_map)
        self._apply_header(program, decoded, state)
        shape = (decoded.heads, state.regs[Reg.SEQ_Q], state.regs[Reg.SEQ_K]) if capture else None
        run = _Run(cfg, state, profile, shape)

        code, names, args = program.code, decoded.names, decoded.args
        handlers, wait_token, queues = decoded.handlers, decoded.wait_token, decoded.queues
        is_transfer, producer = decoded.is_transfer, decoded.producer
        qlen = [len(q) for q in queues]

        free = [0] * len(Unit)  # when each unit's previous instruction ends
        head_of = [0] * len(Unit)
        signals: list[list[int]] = [[] for _ in range(NUM_TOKENS)]
        taken = [0] * NUM_TOKENS
        dram_free = 0
        busy = [0] * len(Unit)
        stalls = [defaultdict(int) for _ in Unit]
        counts = [0] * len(Unit)
        totals = _Totals(program)
        events = [] if trace else None
        labels = program.labels
        latency = cfg.dram_latency_cycles
        depth = cfg.dram_outstanding_requests
        in_flight = [deque() for _ in Unit]  # completion cycles of a DMA unit's transfers in flight, oldest first
        slot = [0] * len(Unit)  # when a DMA unit may issue its next transfer (a transfer slot is free)
        done = [0] * len(Unit)  # when a DMA unit's last transfer completes (completions come in issue order)

        remaining = sum(qlen)
        while remaining:
            best, best_start, best_pc = -1, 0, 0  # the unit whose next instruction can start earliest
            for u in range(len(queues)):
                h = head_of[u]
                if h == qlen[u]:
                    continue
                pc = queues[u][h]
                start = max(free[u], slot[u]) if is_transfer[pc] else free[u]
                token = wait_token[pc]
                if token >= 0:
                    sent = signals[token]
                    if taken[token] >= len(sent):
                        continue  # blocked until its producer signals
                    start = max(start, sent[taken[token]])
                if best < 0 or start < best_start:
                    best, best_start, best_pc = u, start, pc
            if best < 0:
                raise self._deadlock(code, queues, head_of, taken, signals)
            u, start, pc = best, best_start, best_pc
            head_of[u] += 1
            remaining -= 1
            counts[u] += 1
            token = wait_token[pc]
            if token >= 0:
                taken[token] += 1
                idle = max(free[u], done[u])  # a DMA unit with transfers in flight is busy, not stalled
                if start > idle:
                    stalls[u][f"wait:{producer[token].label}"] += start - idle
                free[u] = start
                continue
            name = names[pc]
            if name == "SIGNAL":
                signals[args[pc]["token"]].append(max(start, done[u]))  # a DMA unit's after its transfers
                continue
            try:
                work = handlers[pc](run, args[pc], pc, code[pc])
            except SimulatorTrap as trap:
                if trap.instruction is not None:
                    raise
                raise type(trap)(trap.detail, pc, code[pc]) from None  # name the faulting instruction
            if _IS_DMA[u]:
                transfer = dram_transfer_cycles(work, cfg)
                begin = max(start + latency, dram_free)
                # busy: while any of the unit's transfers is in flight, less what waits for the other unit's
                contention = max(0, begin - max(start + latency, done[u]))
                if contention:
                    stalls[u]["dram:contention"] += contention
                end = math.ceil(begin + transfer)
                dram_free = end
                busy[u] += end - max(start, done[u]) - contention
                done[u] = end
                flying = in_flight[u]
                flying.append(end)
                # the next transfer issues at once while a slot is free, else when the oldest completes
                slot[u] = flying.popleft() if len(flying) == depth else start
                free[u] = start
            else:
                end = start + compute_cycles(u, work, cfg)
                busy[u] += end - start
                free[u] = end
            totals.add(work)
            if events is not None:
                events.append((Unit(u), pc, name, start, end, labels[pc] if labels else ""))

        cycles = max(*free, *done)
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
    """Accumulates action counts over a run. DRAM segments are kept as they come and attributed to the
    memory map's tensors once, at the end."""

    def __init__(self, program: Program):
        self.program = program
        self.segments: list = []  # every Work's (addresses, byte counts, is_write)
        self.sram = {b: {"read": 0, "write": 0} for b in BUFFERS}
        self.fu_macs = defaultdict(int)
        self.fu_passes = 0
        self.au_macs = 0
        self.exps = 0
        self.compares = 0
        self.norms = 0

    def add(self, work) -> None:
        self.segments += work.segments
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

    def dram_bytes(self, is_write: bool) -> dict[str, int]:
        """Bytes moved per memory-map tensor ("unmapped" for addresses outside every region)."""
        segs = [(a, n) for a, n, w in self.segments if w == is_write]
        if not segs:
            return {}
        addrs = np.concatenate([np.atleast_1d(a) for a, _ in segs])
        nbytes = np.concatenate([np.atleast_1d(n) for _, n in segs])
        starts, ends, names = self.program.memory_map.bounds
        starts, ends = np.asarray(starts), np.asarray(ends + [0])  # index -1 hits the sentinel 0: unmapped
        at = np.searchsorted(starts, addrs, side="right") - 1
        at = np.where(addrs < ends[at], at, len(names))
        per = np.bincount(at, weights=nbytes, minlength=len(names) + 1).astype(np.int64)
        # tensors in the order the run first touched them, as a reader of the dict would expect
        _, first = np.unique(at, return_index=True)
        order = at[np.sort(first)]
        return {(names[i] if i < len(names) else "unmapped"): int(per[i]) for i in order.tolist()}

    def stats(self, cfg, cycles, busy, stalls, counts, run) -> dict:
        dram_read, dram_write = self.dram_bytes(False), self.dram_bytes(True)
        stats = {
            "config": cfg.name,
            "cycles": int(cycles),
            "time_us": cycles / cfg.clock_ghz / 1e3,
            "units": {u.label: {"instructions": counts[u], "busy": int(busy[u]),
                                "stall": {k: int(v) for k, v in sorted(stalls[u].items())},
                                "utilization": busy[u] / cycles if cycles else 0.0} for u in Unit},
            "dram_bytes": {"read": dram_read, "write": dram_write,
                           "read_total": sum(dram_read.values()), "write_total": sum(dram_write.values())},
            "dram_segments": sum(np.size(a) for a, _n, _w in self.segments),
            "sram_bytes": self.sram,
            "macs": {**{f"fu_{k}": v for k, v in sorted(self.fu_macs.items())}, "au_int16": self.au_macs},
            "fu_mac_passes": self.fu_passes,
            "exps": self.exps,
            "compares": self.compares,
            "norms": self.norms,
            "candidates": run.candidates,
            "kept_per_round": [run.kept[r] for r in sorted(run.kept)],
        }
        stats["kept_ratio"] = [k / run.candidates if run.candidates else 0.0 for k in stats["kept_per_round"]]
        heads = 1 + max((h for counts in run.by_head.values() for h in counts), default=-1)
        cand = [run.by_head[0][h] for h in range(heads)]
        stats["kept_ratio_by_head"] = [[run.by_head[r][h] / cand[h] if cand[h] else 0.0 for h in range(heads)]
                                       for r in sorted(run.kept)]
        dram_total = stats["dram_bytes"]["read_total"] + stats["dram_bytes"]["write_total"]
        stats["dram_utilization"] = dram_total / (cycles * cfg.dram_bytes_per_cycle) if cycles else 0.0
        stats["energy_pj"] = energy_breakdown(stats, cfg)
        return stats
