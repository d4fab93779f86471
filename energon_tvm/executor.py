"""The executor of offloaded attention calls: the contract between the TVM backend and the machine.

Everything a call needs travels as an argument; nothing is parked in module or thread state.

Compile side. :class:`EnergonTarget` is the one frozen record a compile is given: the hardware config,
the MP-MRF parameters (one set for every site, or per site) and the schedule source (the heuristic, or
tuning records). :func:`compile_call` turns one workload into a :class:`CompiledProgram`: the
program's container bytes (which carry their own hardware config), the schedule and where it came
from.

Run side. A :class:`Runner` owns a run's options (trace, backend) and the :class:`CallRecord` of every
call it executed; the package session hands one to the TVM bridge, which calls
:meth:`Runner.run_call` with each call site's program bytes and operands. Two runners in one process
never see each other's options or calls.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .isa.config import HardwareConfig, load_config
from .isa.errors import BinaryFormatError, ConfigError, EnergonError, ScheduleError
from .isa.numerics import MPMRFParams
from .isa.program import Program
from .schedules import AttentionWorkload, Schedule, check_program, default_schedule, emit_program
from .schedules.cost import resolve_objective

BACKENDS = ("simulator", "timing", "reference")
HEURISTIC = "heuristic"
TUNED = "tuning records"


# -- compile side -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleChoice:
    """The schedule one workload got, and where it came from: :data:`HEURISTIC` or :data:`TUNED` (then
    ``record`` is the record's id, :func:`record_id`), and what it was chosen for: the objective the
    heuristic ranked by, or the one the record was tuned for."""

    schedule: Schedule
    source: str = HEURISTIC  # or TUNED
    record: str | None = None
    objective: str | None = None  # one of schedules.cost.OBJECTIVES

    def describe(self) -> str:
        text = self.source if self.record is None else f"{self.source} {self.record}"
        return text if self.objective is None else f"{text}, {self.objective}"


def record_id(record) -> str:
    """A tuning record's identity: the first 12 hex digits of the SHA-256 of its canonical JSON line."""
    return hashlib.sha256(record.to_json().encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ScheduleSource:
    """Where schedules come from: the heuristic (:func:`default_schedule`, ranking by ``objective``, its
    default when None), or the best matching tuning record in the objective the records state (the
    heuristic for a workload no record matches)."""

    records: tuple = ()  # TuningRecord, as read by energon_tvm.tuner.records
    objective: str | None = None  # the heuristic's ranking: one of schedules.cost.OBJECTIVES

    def __post_init__(self) -> None:
        try:
            resolve_objective(self.objective)
        except ScheduleError as err:
            raise ConfigError(f"schedule {err}") from None

    @classmethod
    def from_records(cls, records, objective: str | None = None) -> ScheduleSource:
        """``records``: None (heuristic only), a JSON-lines path, or TuningRecords / record dicts;
        ``objective``: how the heuristic ranks schedules (None: its default)."""
        if records is None:
            return cls(objective=objective)
        from .tuner.records import as_records

        return cls(tuple(as_records(records)), objective)

    def choose(self, workload: AttentionWorkload, cfg: HardwareConfig) -> ScheduleChoice:
        if self.records:
            from .tuner.records import best_record

            best = best_record(self.records, workload, cfg)  # matching, measured, and fitting this machine
            if best is not None:
                return ScheduleChoice(best.schedule, TUNED, record_id(best), best.objective)
        objective = resolve_objective(self.objective)
        return ScheduleChoice(default_schedule(workload, cfg, objective), objective=objective)


@dataclass(frozen=True)
class EnergonTarget:
    """What one compile targets: the machine, the MP-MRF parameters and the schedule source.

    ``params`` applies to every site; ``site_params`` (site name -> parameters, the names the offload
    report uses) overrides it per site.
    """

    config: HardwareConfig
    params: MPMRFParams = field(default_factory=MPMRFParams)
    site_params: tuple[tuple[str, MPMRFParams], ...] = ()
    schedules: ScheduleSource = field(default_factory=ScheduleSource)

    def __post_init__(self) -> None:
        if not isinstance(self.config, HardwareConfig):
            raise ConfigError(f"EnergonTarget.config must be a HardwareConfig; got {type(self.config).__name__}")
        for site, params in ((None, self.params), *self.site_params):
            if not isinstance(params, MPMRFParams):
                where = "params" if site is None else f"site_params[{site!r}]"
                raise ConfigError(f"EnergonTarget.{where} must be MPMRFParams; got {type(params).__name__}")
        if not isinstance(self.schedules, ScheduleSource):
            raise ConfigError(f"EnergonTarget.schedules must be a ScheduleSource; got "
                              f"{type(self.schedules).__name__}")

    @classmethod
    def create(cls, config="edge", params: MPMRFParams | None = None, *, site_params: Mapping | None = None,
               tuning_records=None) -> EnergonTarget:
        """From a config name / .toml path / HardwareConfig, parameters and tuning records."""
        cfg = config if isinstance(config, HardwareConfig) else load_config(config)
        return cls(cfg, MPMRFParams() if params is None else params, tuple(sorted((site_params or {}).items())),
                   ScheduleSource.from_records(tuning_records))

    def params_for(self, site: str) -> MPMRFParams:
        for name, params in self.site_params:
            if name == site:
                return params
        return self.params


@dataclass(frozen=True)
class CompiledProgram:
    """One call's program: the container bytes a call site carries, and the schedule they were emitted
    for."""

    blob: bytes
    workload: AttentionWorkload
    choice: ScheduleChoice


def compile_call(workload: AttentionWorkload, target: EnergonTarget) -> CompiledProgram:
    """The program for one offloaded call. Raises ScheduleError for a workload the machine cannot take;
    the call site then stays on the host, with that reason."""
    choice = target.schedules.choose(workload, target.config)
    blob = emit_program(workload, choice.schedule, target.config).to_bytes()
    return CompiledProgram(blob, workload, choice)


# -- run side ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CallStats:
    """What one executed call did, in the one vocabulary every report uses.

    ``kept_per_round`` counts the query-key pairs left after each filter round; ``kept`` is the final
    count (``candidates`` when there is no round). ``machine`` holds the simulator's statistics
    (cycles, per-unit busy and stalls, DRAM and SRAM bytes, MACs, energy; see
    :meth:`energon_tvm.runtime_sim.Simulator.run`): a full run's on the simulator backend, a timing-only
    run's on the timing backend (the same figures), empty on the reference backend. Reads by key
    (``stats["cycles"]``) reach the fields first, then the machine's figures.
    """

    executor: str
    pairs: int
    candidates: int
    kept_per_round: tuple[int, ...]
    machine: Mapping[str, Any] = field(default_factory=dict)
    trace: tuple | None = None

    @property
    def rounds(self) -> int:
        return len(self.kept_per_round)

    @property
    def kept(self) -> int:
        return self.kept_per_round[-1] if self.kept_per_round else self.candidates

    @property
    def kept_ratio(self) -> tuple[float, ...]:
        """Kept pairs after each round over the candidate pairs."""
        return tuple(k / self.candidates if self.candidates else 0.0 for k in self.kept_per_round)

    @property
    def final_kept_ratio(self) -> float:
        return self.kept / self.candidates if self.candidates else 0.0

    #: what a read by key finds on the record itself (fields and derived figures); the rest is the machine's
    _RECORD = ("executor", "pairs", "candidates", "kept_per_round", "trace", "rounds", "kept", "kept_ratio",
               "final_kept_ratio")

    def __getitem__(self, key: str):
        if key in self._RECORD:
            value = getattr(self, key)
            return list(value) if isinstance(value, tuple) else value
        return self.machine[key]

    def get(self, key: str, default=None):
        try:
            value = self[key]
        except KeyError:
            return default
        return default if value is None else value

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def to_dict(self) -> dict:
        """A plain dict: the machine's figures with this record's fields over them (the trace left out)."""
        return {**self.machine, "executor": self.executor, "pairs": self.pairs, "candidates": self.candidates,
                "kept_per_round": list(self.kept_per_round), "kept": self.kept, "rounds": self.rounds,
                "kept_ratio": list(self.kept_ratio), "final_kept_ratio": self.final_kept_ratio}


@dataclass(frozen=True)
class CallRecord:
    """One executed offloaded call. ``inputs`` (q, k, v, bias as float32 [B,H,S,D] / bias or None)
    and ``output`` are set when the runner captures."""

    site: str
    workload: AttentionWorkload
    stats: CallStats
    inputs: dict | None = None
    output: np.ndarray | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a runner executes calls. ``backend``:

    - "simulator": the program runs on the full simulator; outputs are the machine's own (bit-exact),
      with cycles, DRAM bytes, energy and traces;
    - "timing": outputs and kept sets from the numpy MP-MRF reference, cycles, DRAM bytes and energy
      from a timing-only simulator run driven by the reference's sparsity (the same figures a full run
      gives, without its arithmetic); traces too;
    - "reference": the numpy MP-MRF reference only: outputs and kept sets, no machine figures.

    ``trace`` records a Chrome trace per call; ``capture`` keeps each call's inputs and output."""

    backend: str = "simulator"
    trace: bool = False
    capture: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown executor backend {self.backend!r}; known: {', '.join(BACKENDS)}")


class TimingCache:
    """The timing backend's machine figures per distinct (program, sparsity): a timing-only run is a
    function of the program's bytes and the kept sets of every round (the candidates included), and of
    nothing else (the operands' values enter only through the kept sets), so a call whose program and
    masks equal an earlier call's gets that run's figures without simulating again, exactly. Keys are
    SHA-256 digests of the program and of the bit-packed masks; at most ``capacity`` entries, the
    least recently used dropped first. Runs with a trace are not cached (their trace is kept per call).
    ``hits`` and ``misses`` count the look-ups."""

    def __init__(self, capacity: int = 4096):
        if capacity < 0:
            raise ConfigError(f"timing cache capacity {capacity}: must be >= 0")
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: dict[bytes, dict] = {}

    @staticmethod
    def key(program_digest: bytes, masks) -> bytes:
        h = hashlib.sha256(program_digest)
        for m in masks:
            h.update(repr(m.shape).encode())
            h.update(np.packbits(m, axis=None).tobytes())
        return h.digest()

    def get(self, key: bytes) -> dict | None:
        stats = self._entries.pop(key, None)
        if stats is None:
            self.misses += 1
            return None
        self._entries[key] = stats  # most recently used last
        self.hits += 1
        return stats

    def put(self, key: bytes, stats: dict) -> None:
        if self.capacity == 0:
            return
        self._entries[key] = stats
        while len(self._entries) > self.capacity:
            self._entries.pop(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)


class Runner:
    """Executes offloaded calls with its own options and keeps what they did.

    ``runner.calls`` lists the :class:`CallRecord` of every call since the last :meth:`take`. Decoded
    programs are kept per runner (a model's calls reuse a handful of programs). ``allowed_programs``,
    when given, is the set of SHA-256 digests of the only programs this runner executes (a package's
    listed programs: a library carrying any other program fails at that call). ``on_call``, when given,
    receives every call's :class:`CallRecord` as the call ends, with its inputs (q, k, v, bias) whatever
    ``capture`` says: how a caller sees every call's operands without keeping them all (``tvmc
    calibrate``). ``timing_cache``: the timing backend's :class:`TimingCache` (a new one per runner by
    default; ``TimingCache(0)`` simulates every call).
    """

    def __init__(self, options: RunOptions | None = None, *, allowed_programs: frozenset[bytes] | None = None,
                 on_call=None, timing_cache: TimingCache | None = None, **kwargs):
        self.options = options if options is not None else RunOptions(**kwargs)
        self.timing_cache = timing_cache if timing_cache is not None else TimingCache()
        self.on_call = on_call
        self.allowed_programs = None if allowed_programs is None else frozenset(allowed_programs)
        self.calls: list[CallRecord] = []
        #: the project error a call raised inside a VM (which reaches the VM's caller as a RuntimeError)
        self.fault: EnergonError | None = None
        self._programs: dict[bytes, tuple[Program, AttentionWorkload]] = {}
        self._decoded: dict[bytes, tuple] = {}  # digest -> (Simulator, Decoded), see _machine

    def configure(self, **changes) -> Runner:
        """Change some options (``runner.configure(trace=True)``); returns the runner."""
        self.options = replace(self.options, **changes)
        return self

    def raise_fault(self) -> None:
        """After a VM call failed: raise the project error behind it as itself, if one of this runner's
        calls raised it; else return (the failure was the host's)."""
        fault, self.fault = self.fault, None
        if fault is not None:
            raise fault from None

    def take(self) -> list[CallRecord]:
        """The calls recorded so far, and forget them."""
        calls, self.calls = self.calls, []
        return calls

    def by_site(self) -> dict[str, list[CallRecord]]:
        out: dict[str, list[CallRecord]] = {}
        for call in self.calls:
            out.setdefault(call.site, []).append(call)
        return out

    def summary(self) -> dict:
        """Calls, and the kept ratio over all calls (kept pairs / candidate pairs)."""
        candidates = sum(c.stats.candidates for c in self.calls)
        kept = sum(c.stats.kept for c in self.calls)
        return {"calls": len(self.calls), "candidates": candidates, "kept": kept,
                "final_kept_ratio": kept / candidates if candidates else 0.0}

    def program(self, blob, decoded: Program | None = None) -> tuple[Program, AttentionWorkload]:
        """The decoded program of a call's bytes and the workload it was compiled for, its metadata, memory
        map and header checked against that workload (:func:`~energon_tvm.schedules.check_program`).
        ``decoded``: ``Program.from_bytes(blob)`` when the caller has it already (it is checked here all
        the same)."""
        return self._entry(blob, decoded)[1:]

    def _entry(self, blob, decoded: Program | None = None) -> tuple[bytes, Program, AttentionWorkload]:
        """:meth:`program`, with the SHA-256 digest of the bytes (the key of the runner's caches) first."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise BinaryFormatError(f"a call's program must be bytes, got {type(blob).__name__}")
        blob = bytes(blob)
        key = hashlib.sha256(blob).digest()
        if self.allowed_programs is not None and key not in self.allowed_programs:
            raise BinaryFormatError(f"the call's program (sha256 {key.hex()[:16]}..., {len(blob)} bytes) is not one "
                                    f"the package lists: its library and its programs/*.bin disagree")
        hit = self._programs.get(key)
        if hit is None:
            prog = Program.from_bytes(blob) if decoded is None else decoded
            hit = self._programs[key] = (prog, check_program(prog))  # its workload, schedule and memory map checked
        return (key, *hit)

    def run_call(self, blob, q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None,
                 site: str = "") -> tuple[np.ndarray, CallStats]:
        """Execute one call: q [B,H,Sq,D], k/v [B,H,Sk,D] float32, bias broadcastable to [B,H,Sq,Sk] or
        None -> (output float32 [B,H,Sq,D], its :class:`CallStats`); the call is recorded."""
        digest, prog, w = self._entry(blob)
        _check_operands(w, q, k, v, bias)
        opts = self.options
        if opts.backend == "simulator":
            from .runtime_sim import run_attention

            simulator, decoded = self._machine(digest, prog)
            out, sim = run_attention(prog, prog.config, q, k, v, bias, trace=opts.trace, simulator=simulator,
                                     decoded=decoded)
            machine, trace = _figures(sim, prog, opts.trace)
        else:
            from .mpmrf import reference_attention

            result = reference_attention(w, q, k, v, bias)
            out = result.output
            if opts.backend == "timing":
                machine, trace = self._timing(digest, prog, result)
        if opts.backend == "reference":
            stats = CallStats("reference", _pairs(w), int(result.candidates.sum()),
                              tuple(int(m.sum()) for m in result.kept))
        else:
            stats = CallStats(opts.backend, _pairs(w), int(machine["candidates"]),
                              tuple(int(n) for n in machine["kept_per_round"]), machine, trace)
        inputs = {"q": q, "k": k, "v": v, "bias": bias}
        record = CallRecord(site, w, stats, inputs if opts.capture else None, out.copy() if opts.capture else None)
        self.calls.append(record)
        if self.on_call is not None:
            self.on_call(record if opts.capture else replace(record, inputs=inputs))
        return out, stats

    def _timing(self, digest: bytes, prog: Program, result) -> tuple[dict, tuple | None]:
        """A timing-only run on the reference's sparsity: (the machine's figures, trace events or None),
        from the runner's timing cache when the same program (``digest``) met the same kept sets before."""
        from .runtime_sim import SparsityProfile

        profile = SparsityProfile.from_reference(result)
        simulator, decoded = self._machine(digest, prog)
        if self.options.trace:
            return _figures(simulator.run(prog, profile=profile, trace=True, decoded=decoded), prog, True)
        key = TimingCache.key(digest, profile.masks)
        machine = self.timing_cache.get(key)
        if machine is None:
            machine = dict(simulator.run(prog, profile=profile, decoded=decoded).stats)
            self.timing_cache.put(key, machine)
        return copy.deepcopy(machine), None

    def _machine(self, digest: bytes, prog: Program):
        """The simulator of ``prog``'s configuration and ``prog`` decoded for it (``Simulator.decode``):
        made at the program's first run, kept with the runner's decoded programs."""
        hit = self._decoded.get(digest)
        if hit is None:
            from .runtime_sim import Simulator

            simulator = Simulator(prog.config)
            hit = self._decoded[digest] = (simulator, simulator.decode(prog))
        return hit


def _figures(sim, prog: Program, trace: bool) -> tuple[dict, tuple | None]:
    """A simulator run's statistics, and its Chrome-trace events when ``trace``."""
    from .runtime_sim.report import chrome_trace

    events = tuple(chrome_trace(sim, prog.config.clock_ghz)["traceEvents"]) if trace else None
    return dict(sim.stats), events


def _pairs(w: AttentionWorkload) -> int:
    return w.batch * w.heads * w.seq_q * w.seq_k


def _check_operands(w: AttentionWorkload, q, k, v, bias) -> None:
    expected = {"q": (w.batch, w.heads, w.seq_q, w.head_dim), "k": (w.batch, w.heads, w.seq_k, w.head_dim),
                "v": (w.batch, w.heads, w.seq_k, w.head_dim)}
    for name, x in (("q", q), ("k", k), ("v", v)):
        if np.shape(x) != expected[name]:
            raise ScheduleError(f"{name} has shape {list(np.shape(x))}; the program was compiled for "
                                f"{list(expected[name])}")
    if (bias is None) != (w.bias_shape is None):
        raise ScheduleError(f"the program was compiled for bias {w.bias_shape}, got "
                            f"{None if bias is None else list(np.shape(bias))}")
    if bias is not None and tuple(np.shape(bias)) != w.bias_shape:
        raise ScheduleError(f"bias has shape {list(np.shape(bias))}; the program was compiled for "
                            f"{list(w.bias_shape)}")


__all__ = ["BACKENDS", "CallRecord", "CallStats", "CompiledProgram", "EnergonTarget", "RunOptions", "Runner",
           "ScheduleChoice", "ScheduleSource", "TimingCache", "compile_call", "record_id"]
