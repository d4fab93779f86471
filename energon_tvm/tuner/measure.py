"""Measurement: one schedule's cycles and energy, from the simulator's timing-only mode and a sparsity profile.

:class:`MeasureTask` is everything the measurements of one tuning session share (workload, machine,
the sparsity profile recorded from calibration data, the instruction budget); it is plain picklable
data, sent once to each worker. :func:`measure` is a pure module-level function of (task, schedule),
so the same measurement gives the same :class:`MeasureResult` in this process, in a process pool or on
a Dask worker. A worker unpacks a task's profile once and keeps it for the task's later schedules.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..isa.config import HardwareConfig, load_config
from ..isa.errors import EnergonError
from ..mpmrf import reference_attention
from ..runtime_sim.machine import Simulator
from ..runtime_sim.profile import SparsityProfile
from ..schedules.emit import emit_program
from ..schedules.schedule import Schedule
from ..schedules.workload import AttentionWorkload
from .errors import TuningError
from .objectives import objective_value
from .space import DEFAULT_MAX_INSTRUCTIONS


@dataclass(frozen=True)
class MeasureResult:
    """Cycles and energy of one schedule (cycles None when it could not be measured, with the reason in
    ``error``), and the objective its :attr:`score` is read in."""

    cycles: int | None
    instructions: int = 0
    error: str | None = None
    energy_pj: float | None = None
    objective: str = "cycles"

    @property
    def ok(self) -> bool:
        return self.score is not None

    @property
    def score(self) -> float | None:
        """The objective's value (lower is better), None when not measured."""
        return objective_value(self.objective, self.cycles, self.energy_pj)


@dataclass(frozen=True, eq=False)
class MeasureTask:
    """What every measurement of one (workload, config, profile) shares; build with :meth:`create`."""

    workload: dict            # AttentionWorkload.to_dict()
    config: HardwareConfig
    planes: tuple[np.ndarray, ...]  # the profile's masks, bit-packed along keys (as SparsityProfile.save)
    shape: tuple[int, int, int]     # [heads, Sq, Sk]
    max_instructions: int = DEFAULT_MAX_INSTRUCTIONS
    digest: str = ""                # identity of all of the above: the worker cache key, recorded

    @classmethod
    def create(cls, workload: AttentionWorkload, cfg: HardwareConfig | str | Path,
               profile: SparsityProfile | str | Path, *,
               max_instructions: int = DEFAULT_MAX_INSTRUCTIONS) -> MeasureTask:
        """Check that ``profile`` (an object, or a ``.npz`` read here so workers need no shared files)
        matches ``workload``, and pack it for transport."""
        cfg = load_config(cfg)
        if not isinstance(profile, SparsityProfile):
            profile = SparsityProfile.load(profile)  # np.load(allow_pickle=False): never unpickles
        check_profile(workload, profile)
        shape = tuple(int(n) for n in profile.masks[0].shape)
        planes = tuple(np.packbits(m, axis=-1) for m in profile.masks)
        h = hashlib.sha256()
        h.update(json.dumps(workload.to_dict(), sort_keys=True).encode())
        h.update(cfg.fingerprint)
        h.update(str(max_instructions).encode())
        for p in planes:
            h.update(p.tobytes())
        return cls(workload.to_dict(), cfg, planes, shape, max_instructions, h.hexdigest())

    def profile(self) -> SparsityProfile:
        return SparsityProfile(tuple(np.unpackbits(p, axis=-1, count=self.shape[-1]).astype(bool)
                                     for p in self.planes))

    @property
    def profile_digest(self) -> str:
        """Identity of the sparsity data alone (recorded, so records say what data they were timed on)."""
        h = hashlib.sha256(repr(self.shape).encode())
        for p in self.planes:
            h.update(p.tobytes())
        return h.hexdigest()[:16]


def check_profile(workload: AttentionWorkload, profile: SparsityProfile) -> None:
    """Reject a profile recorded for another shape or another number of filter rounds."""
    want = (workload.batch * workload.heads, workload.seq_q, workload.seq_k)
    got = tuple(profile.masks[0].shape)
    if got != want:
        raise TuningError(f"sparsity profile covers [heads, Sq, Sk] = {list(got)}; workload {workload.key()} "
                          f"needs {list(want)}")
    rounds = len(workload.params.rounds)
    if profile.rounds != rounds:
        raise TuningError(f"sparsity profile has {profile.rounds} filter round(s); the workload's MP-MRF "
                          f"parameters have {rounds}")


def profile_from_arrays(workload: AttentionWorkload, q, k, v, mask=None) -> SparsityProfile:
    """Run the MP-MRF reference on calibration Q/K/V (and the model's additive ``mask``, if any) with
    the workload's parameters, and keep the candidate and kept sets it produced.

    Causal masking is added here from ``workload.causal``, as the accelerator applies it
    (:func:`~energon_tvm.mpmrf.reference_attention`).
    """
    w = workload
    want_q = (w.batch, w.heads, w.seq_q, w.head_dim)
    want_kv = (w.batch, w.heads, w.seq_k, w.head_dim)
    for name, arr, want in (("q", q, want_q), ("k", k, want_kv), ("v", v, want_kv)):
        if tuple(np.shape(arr)) != want:
            raise TuningError(f"calibration {name} has shape {list(np.shape(arr))}; workload {w.key()} "
                              f"needs {list(want)}")
    return SparsityProfile.from_reference(reference_attention(w, q, k, v, mask))


# A worker keeps the last few tasks it has seen unpacked (a session measures one task many times).
_CACHE: dict[str, tuple[AttentionWorkload, Simulator, SparsityProfile]] = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


def _unpacked(task: MeasureTask) -> tuple[AttentionWorkload, Simulator, SparsityProfile]:
    with _CACHE_LOCK:
        hit = _CACHE.get(task.digest)
        if hit is None:
            hit = (AttentionWorkload.from_dict(task.workload),
                   Simulator(task.config, budget=task.max_instructions), task.profile())
            if len(_CACHE) >= _CACHE_SIZE:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[task.digest] = hit
        return hit


def measure(task: MeasureTask, schedule: dict) -> MeasureResult:
    """Emit ``schedule`` (a :meth:`Schedule.to_dict`) for the task's workload and time it, timing only.

    Never raises for a schedule the machine rejects: the reason becomes the result's ``error``, so one
    bad point cannot end a session (as AutoTVM records a failed build).
    """
    w, sim, profile = _unpacked(task)
    try:
        program = emit_program(w, Schedule.from_dict(schedule), task.config)
        result = sim.run(program, profile=profile)
    except EnergonError as err:
        return MeasureResult(None, 0, f"{type(err).__name__}: {err}")
    return MeasureResult(int(result.stats["cycles"]), len(program.code),
                         energy_pj=float(result.stats["energy_pj"]["total"]))
