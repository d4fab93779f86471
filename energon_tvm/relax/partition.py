"""``partition_for_energon``: the one entry point of the TVM backend.

    mod --ConvertToDataflow--> find every attention-shaped site (discovery, for the report)
        --FuseOpsByPattern(energon.*)--> composites, each accepted by the checks
        --MergeCompositeFunctions--> Codegen="energon" functions (see _group for the exception)
        --lowering--> R.call_dps_packed("energon.run_attention", ...) at each site, layout ops around it
        --DeadCodeElimination--> the host ops the lowering made redundant are gone

The result is an ordinary Relax module: ``tvm.compile(mod, "llvm")`` builds it, the VM runs it with the
attention calls going through the runtime bridge (:mod:`~energon_tvm.relax.bridge`).
"""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import relax

from ..isa.config import HardwareConfig, load_config
from ..isa.errors import EnergonError
from ..isa.numerics import MPMRFParams
from .checks import PartitionSession, Verdict, session_scope
from .discovery import discover
from .lowering import is_energon_function, lower_energon_calls
from .patterns import energon_patterns
from .report import OFFLOADED, OffloadRecord, OffloadReport


class PartitionError(EnergonError, TypeError):
    """``partition_for_energon`` was given something that is not a module, config or parameter set."""


def _resolve_config(config) -> HardwareConfig:
    if isinstance(config, HardwareConfig):
        return config
    if isinstance(config, (str, Path)):
        return load_config(config)
    raise PartitionError(f"config must be a config name, a .toml path or a HardwareConfig; got "
                         f"{type(config).__name__}")


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


def _report(candidates, session: PartitionSession, lowered: set[str], config: str) -> OffloadReport:
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
        records.append(OffloadRecord(name, function, offloaded, reason, verdict.workload, verdict.pattern,
                                     verdict.form))
    return OffloadReport(tuple(records), config)


def _has_composites(mod: tvm.IRModule) -> bool:
    return any(isinstance(f, relax.Function) and f.attrs is not None and "Composite" in f.attrs
               for f in mod.functions.values())


def _group(mod: tvm.IRModule) -> tvm.IRModule:
    """FuseOpsByPattern + MergeCompositeFunctions: each accepted site becomes a Codegen="energon"
    function. MergeCompositeFunctions of TVM 0.27 cannot walk a module that already calls an
    ExternFunc (e.g. one partitioned before); there the composites are wrapped one by one instead
    (``annotate_codegen=True``), which the lowering reads the same way."""
    fused = relax.transform.FuseOpsByPattern(energon_patterns(), bind_constants=True,
                                             annotate_codegen=False)(mod)
    if not _has_composites(fused):
        return fused
    try:
        return relax.transform.MergeCompositeFunctions()(fused)
    except tvm.error.InternalError:
        return relax.transform.FuseOpsByPattern(energon_patterns(), bind_constants=True,
                                                annotate_codegen=True)(mod)


def partition_for_energon(mod: tvm.IRModule, config="edge", params: MPMRFParams | None = None
                          ) -> tuple[tvm.IRModule, OffloadReport]:
    """Offload every attention block of ``mod`` that Energon can take.

    ``config``: a hardware config name (``edge``, ``server``), a .toml path, or a HardwareConfig;
    ``params``: the MP-MRF parameters every call runs with (default ``MPMRFParams()``).
    Returns the rewritten module (host ops + bridge calls) and the report of every attention site.
    """
    if not isinstance(mod, tvm.IRModule):
        raise PartitionError(f"partition_for_energon takes a tvm.IRModule; got {type(mod).__name__}")
    cfg = _resolve_config(config)
    params = MPMRFParams() if params is None else params
    if not isinstance(params, MPMRFParams):
        raise PartitionError(f"params must be MPMRFParams; got {type(params).__name__}")
    if any(isinstance(f, relax.Function) and is_energon_function(f) for f in mod.functions.values()):
        raise PartitionError("the module is already partitioned for energon")

    mod = relax.transform.ConvertToDataflow()(mod)
    candidates = discover(mod)
    session = PartitionSession(cfg, params, weights=_weights(mod))
    with session_scope(session):
        mod = _group(mod)
        mod, lowered = lower_energon_calls(mod, session)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, _report(candidates, session, set(lowered), cfg.name)
