"""The executor of one offloaded attention call: the contract between the TVM backend and the machine.

``compile_call`` turns a workload into the Energon program an offloaded call site carries (the
scheduler picks the tiling: the best tuning record when one applies, else the heuristic); ``run_call``
runs that program on the instruction-level simulator with concrete Q/K/V. The Relax lowering and the
runtime bridge treat the program as opaque bytes.

Options scoped with context managers:

* :func:`compile_options` — the hardware config, tuning records, a log for -v, and which schedule each
  compiled program got;
* :func:`run_options` — record a trace per call, or run calls on the numpy reference instead of the
  simulator (bit-identical kept sets, much faster: for accuracy sweeps).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from dataclasses import dataclass, field

import numpy as np

from .isa.config import HardwareConfig
from .isa.errors import BinaryFormatError, ConfigError, ScheduleError
from .isa.program import HEADER, Program
from .schedules import AttentionWorkload, default_schedule, emit_program, fits

BACKENDS = ("simulator", "reference")


@dataclass
class _CompileOptions:
    config: HardwareConfig | None = None
    records: list | None = None
    log: object = None
    chosen: dict = field(default_factory=dict)  # program bytes -> "tuning records" | "heuristic"


@dataclass
class _RunOptions:
    trace: bool = False
    backend: str = "simulator"


_state = threading.local()
_configs: dict[bytes, HardwareConfig] = {}
_programs: dict[str, Program] = {}


def _compile_opts() -> _CompileOptions | None:
    return getattr(_state, "compile", None)


def _run_opts() -> _RunOptions:
    return getattr(_state, "run", None) or _RunOptions()


@contextlib.contextmanager
def compile_options(config: HardwareConfig | None = None, tuning_records=None, log=None):
    """Scope for :func:`compile_call`: ``tuning_records`` (a JSON-lines path or a list of records) pick
    each workload's schedule where one matches; ``log`` gets a line per decision. Yields the dict of
    program bytes -> schedule source."""
    records = None
    if tuning_records is not None:
        from .schedules.tuner.records import read_records

        records = read_records(tuning_records) if not isinstance(tuning_records, list) else tuning_records
    opts = _CompileOptions(config, records, log)
    previous = _compile_opts()
    _state.compile = opts
    if config is not None:
        register_config(config)
    try:
        yield opts.chosen
    finally:
        _state.compile = previous


@contextlib.contextmanager
def run_options(trace: bool = False, backend: str = "simulator"):
    if backend not in BACKENDS:
        raise ConfigError(f"unknown executor backend {backend!r}; known: {', '.join(BACKENDS)}")
    previous = getattr(_state, "run", None)
    _state.run = _RunOptions(trace, backend)
    try:
        yield
    finally:
        _state.run = previous


def register_config(cfg: HardwareConfig) -> None:
    """Make ``cfg`` known to :func:`run_call` (programs name their config by fingerprint only)."""
    _configs[cfg.fingerprint] = cfg


def config_from_dict(values: dict) -> HardwareConfig:
    """A config from the ``values`` a package manifest records (``HardwareConfig.to_dict``)."""
    from .isa.config import BUFFERS, EnergyTable

    try:
        v = dict(values)
        v["buffer_bytes"] = tuple(int(v["buffer_bytes"][b]) for b in BUFFERS)
        v["energy"] = EnergyTable(**v["energy"])
        return HardwareConfig(**v)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"malformed hardware config record: {err}") from None


def _choose_schedule(workload: AttentionWorkload, cfg: HardwareConfig):
    opts = _compile_opts()
    if opts is not None and opts.records is not None:
        from .schedules.tuner.records import best_schedule

        tuned = best_schedule(opts.records, workload, cfg)
        if tuned is not None and fits(workload, tuned, cfg):
            return tuned, "tuning records"
        if opts.log:
            opts.log(f"no tuning record for {workload.key()} on {cfg.name}; using the heuristic schedule")
    return default_schedule(workload, cfg), "heuristic"


def compile_call(workload: AttentionWorkload, config: HardwareConfig) -> bytes:
    """The program (container bytes) for one offloaded call. Raises ScheduleError for a workload the
    machine cannot take; the call site then stays on the host, with that reason."""
    schedule, source = _choose_schedule(workload, config)
    blob = emit_program(workload, schedule, config).to_bytes(config)
    opts = _compile_opts()
    if opts is not None:
        opts.chosen[blob] = source
    register_config(config)
    return blob


def _program(blob) -> tuple[Program, HardwareConfig]:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise BinaryFormatError(f"a call's program must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    key = hashlib.sha256(blob).hexdigest()
    prog = _programs.get(key)
    if prog is None:
        fingerprint = HEADER.unpack_from(blob)[3] if len(blob) >= HEADER.size else None
        # a registered config (a package's own) first, else the built-in config with that fingerprint
        prog = Program.from_bytes(blob, _configs.get(fingerprint))
        if len(_programs) > 256:
            _programs.clear()
        _programs[key] = prog
    cfg = _configs.get(prog.config_fingerprint)
    if cfg is None:
        from .isa.program import _config_for

        cfg = _config_for(prog.config_fingerprint)
        register_config(cfg)
    return prog, cfg


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


def causal_mask(workload: AttentionWorkload) -> np.ndarray:
    """Additive [Sq, Sk] mask: -inf where key k > query q + causal_shift."""
    return np.where(workload.causal_keep(), 0.0, -np.inf).astype(np.float32)


def _reference(w: AttentionWorkload, q, k, v, bias) -> tuple[np.ndarray, dict]:
    from .mpmrf import mpmrf_attention

    mask = None if bias is None else np.asarray(bias, dtype=np.float32)
    if w.causal:
        mask = causal_mask(w) if mask is None else mask + causal_mask(w)
    result = mpmrf_attention(q, k, v, mask, w.params, w.effective_scale)
    kept = [int(m.sum()) for m in result.kept]
    return result.output, {"executor": "reference", "candidates": int(result.candidates.sum()),
                           "kept_per_round": kept, "kept_ratio": [float(r) for r in result.kept_ratios()]}


def run_call(blob: bytes, q: np.ndarray, k: np.ndarray, v: np.ndarray,
             bias: np.ndarray | None) -> tuple[np.ndarray, dict]:
    """Execute one call: q [B,H,Sq,D], k/v [B,H,Sk,D] float32, bias broadcastable to [B,H,Sq,Sk] or
    None -> (output float32 [B,H,Sq,D], stats dict: the simulator's statistics plus ``kept`` (final
    kept pairs), ``final_kept_ratio``, ``pairs`` and ``rounds``)."""
    prog, cfg = _program(blob)
    try:
        w = AttentionWorkload.from_dict(prog.meta["workload"])
    except (KeyError, ScheduleError) as err:
        raise BinaryFormatError(f"program carries no valid workload record: {err}") from None
    _check_operands(w, q, k, v, bias)
    opts = _run_opts()
    if opts.backend == "reference":
        out, stats = _reference(w, q, k, v, bias)
    else:
        from .runtime_sim import run_attention
        from .runtime_sim.report import chrome_trace

        out, result = run_attention(prog, cfg, q, k, v, bias, trace=opts.trace)
        stats = dict(result.stats)
        stats["executor"] = "simulator"
        stats["kept_per_round"] = stats.pop("kept")
        if opts.trace:
            stats["trace"] = chrome_trace(result, cfg.clock_ghz)["traceEvents"]
    kept_rounds = stats["kept_per_round"]
    stats["kept"] = kept_rounds[-1] if kept_rounds else stats["candidates"]
    stats["final_kept_ratio"] = stats["kept"] / stats["candidates"] if stats["candidates"] else 0.0
    stats["pairs"] = w.batch * w.heads * w.seq_q * w.seq_k
    stats["rounds"] = len(w.params.rounds)
    return out, stats


__all__ = ["BACKENDS", "causal_mask", "compile_call", "compile_options", "config_from_dict", "register_config",
           "run_call", "run_options"]
