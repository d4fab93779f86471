"""``partition_for_energon``: the one entry point of the TVM backend.

    mod, target --ConvertToDataflow--> find every attention-shaped site (discovery, for the report)
        --FuseOpsByPattern(energon.*, this call's session bound into the checks)--> composites, each
                                         accepted by the checks, its program compiled for the target
        --MergeCompositeFunctions--> Codegen="energon" functions (see _group for the exception)
        --lowering--> R.call_dps_packed("energon.run_attention", ...) at each site, layout ops around it
        --DeadCodeElimination--> the host ops the lowering made redundant are gone

The result is an ordinary Relax module: ``tvm.compile(mod, "llvm")`` builds it, and a VM made with
:func:`energon_tvm.relax.bridge.virtual_machine` runs it with the attention calls going to that VM's
runner. The report carries, per site, the program bytes and the schedule with its source, which is all
a packager needs.
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from ..executor import EnergonTarget
from ..isa.config import HardwareConfig
from ..isa.errors import EnergonError
from ..isa.numerics import MPMRFParams
from .checks import PartitionSession, Verdict
from .discovery import discover
from .lowering import is_energon_function, lower_energon_calls
from .patterns import energon_patterns
from .report import OFFLOADED, OffloadRecord, OffloadReport


class PartitionError(EnergonError, TypeError):
    """``partition_for_energon`` was given something that is not a module, config or parameter set."""


def _resolve_target(target, params) -> EnergonTarget:
    if target is None:
        target = "edge"
    if isinstance(target, EnergonTarget):
        if params is not None:
            raise PartitionError("give the MP-MRF parameters in the EnergonTarget, not also as params=")
        return target
    if not isinstance(target, (HardwareConfig, str, Path)):
        raise PartitionError(f"config must be a config name, a .toml path or a HardwareConfig (or the target an "
                             f"EnergonTarget); got {type(target).__name__}")
    if params is not None and not isinstance(params, MPMRFParams):
        raise PartitionError(f"params must be MPMRFParams; got {type(params).__name__}")
    return EnergonTarget.create(target, params)


def _weights(mod: tvm.IRModule) -> dict:
    """Parameters that hold weights (after ``num_input``, values in the ``params`` attribute, as
    ``from_onnx(keep_params_in_input=True)`` leaves them), as constants: a scale or a mask kept as
    a weight is still known at compile time."""
    weights = {}
    for func in mod.functions.values():
        attrs = func.attrs if isinstance(func, relax.Function) else None
        if attrs is None or "num_input" not in attrs or "params" not in attrs:
            continue
        params = list(func.params)[int(attrs["num_input"]):]
        for var, value in zip(params, attrs["params"]):
            weights[var] = relax.const(value)
    return weights


def _report(candidates, session: PartitionSession, lowered: set[str]) -> OffloadReport:
    records, seen = [], set()
    functions = {c.site: c.function for c in candidates}
    names = [c.site for c in candidates] + [n for n in session.order if n not in functions]
    by_name = {c.site: c for c in candidates}
    for name in names:
        if name in seen:
            continue
        seen.add(name)
        verdict = session.verdicts.get(name)
        function = functions.get(name, "main")
        if verdict is None:
            verdict = Verdict(False, by_name[name].unmatched_reason(), None)
        offloaded = verdict.offloaded and name in lowered
        reason = OFFLOADED if offloaded else (
            verdict.reason if not verdict.offloaded else "accepted by the check but not lowered")
        program = verdict.program if offloaded else None
        records.append(OffloadRecord(name, function, offloaded, reason, verdict.workload, verdict.pattern,
                                     verdict.form, None if program is None else program.blob,
                                     None if program is None else program.choice))
    return OffloadReport(tuple(records), session.config.name)


def _has_composites(mod: tvm.IRModule) -> bool:
    return any(isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs
               for f in mod.functions.values())


def _group(mod: tvm.IRModule, session: PartitionSession) -> tvm.IRModule:
    """FuseOpsByPattern + MergeCompositeFunctions: each accepted site becomes a Codegen="energon"
    function. MergeCompositeFunctions of TVM 0.27 cannot walk a module that already calls an
    ExternFunc (e.g. one partitioned before); there the composites are wrapped one by one instead
    (``annotate_codegen=True``), which the lowering reads the same way."""
    fused = relax.transform.FuseOpsByPattern(energon_patterns(session), bind_constants=True,
                                             annotate_codegen=False)(mod)
    if not _has_composites(fused):
        return fused
    try:
        return relax.transform.MergeCompositeFunctions()(fused)
    except tvm.error.InternalError:
        return relax.transform.FuseOpsByPattern(energon_patterns(session), bind_constants=True,
                                                annotate_codegen=True)(mod)


def partition_for_energon(mod: tvm.IRModule, target: EnergonTarget | HardwareConfig | str | Path | None = None,
                          params: MPMRFParams | None = None, *, config=None) -> tuple[tvm.IRModule, OffloadReport]:
    """Offload every attention block of ``mod`` that Energon can take.

    ``target``: an :class:`~energon_tvm.executor.EnergonTarget` (hardware config, MP-MRF parameters per
    site, schedule source), or for short a config name (``edge``, ``server``), a .toml path or a
    HardwareConfig, with ``params`` the MP-MRF parameters every call runs with (default
    ``MPMRFParams()``) and the heuristic schedules; default ``edge``. ``config=`` is the same as ``target=``.
    Returns the rewritten module (host ops + bridge calls) and the report of every attention site, each
    offloaded one with its program and schedule.
    """
    if not isinstance(mod, tvm.IRModule):
        raise PartitionError(f"partition_for_energon takes a tvm.IRModule; got {type(mod).__name__}")
    if config is not None and target is not None:
        raise PartitionError("give the target once: positionally or as config=, not both")
    target = _resolve_target(config if target is None else target, params)
    if any(isinstance(f, relax.Function) and is_energon_function(f) for f in mod.functions.values()):
        raise PartitionError("the module is already partitioned for energon")

    mod = relax.transform.ConvertToDataflow()(mod)
    candidates = discover(mod)
    session = PartitionSession(target, weights=_weights(mod))
    mod = _group(mod, session)
    mod, lowered = lower_energon_calls(mod, session)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, _report(candidates, session, set(lowered))
