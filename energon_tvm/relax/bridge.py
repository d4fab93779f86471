"""The runtime bridge: the packed function every offloaded call site calls, bound to one runner.

A partitioned module calls ``R.call_dps_packed("energon.run_attention", (q, k, v, [bias], meta, blob),
out)`` with Q/K/V in [B,H,S,D] and the bias in [B,H,Sq,Sk] broadcast form (the lowering emits the layout
ops), ``meta`` a JSON string {"site", "workload"} and ``blob`` the call's program as uint8. The bridge
hands the blob and operands to its :class:`~energon_tvm.executor.Runner` and writes the output into
``out``.

The function is not in the compiled library: the VM resolves the name in TVM's function registry when
it is created and keeps the function it found. :func:`virtual_machine` binds a runner to the name just
before it creates a VM, so each VM keeps its own runner: two packages (or two machines) run
interleaved in one process, each with its own options and its own calls::

    runner = Runner(capture=True)
    vm = virtual_machine(tvm.compile(mod, "llvm"), runner)
    vm["main"](*inputs)
    runner.calls[0].stats["kept_ratio"], runner.calls[0].inputs["q"], runner.calls[0].output
"""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import tvm
from tvm import relax

from ..executor import CallRecord, Runner
from ..isa.errors import EnergonError

BRIDGE_FUNC = "energon.run_attention"


def _as_float32(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.numpy(), dtype=np.float32)


def run_attention(runner: Runner, *args) -> None:
    """The packed function behind ``energon.run_attention`` (DPS: the last argument is the output)."""
    if len(args) not in (6, 7):
        raise TypeError(f"{BRIDGE_FUNC} takes (q, k, v, [bias], meta, blob, out); got {len(args)} "
                        f"arguments")
    q, k, v = (_as_float32(t) for t in args[:3])
    bias = _as_float32(args[3]) if len(args) == 7 else None
    meta = json.loads(str(args[-3]))
    blob = args[-2].numpy().tobytes()
    out = args[-1]
    try:
        output, _stats = runner.run_call(blob, q, k, v, bias, site=str(meta.get("site")))
    except EnergonError as err:
        # TVM re-raises whatever a packed function raises as a RuntimeError; the runner keeps the
        # original so that the caller of the VM can raise it as itself (Runner.raise_fault)
        runner.fault = err
        raise
    out.copyfrom(np.ascontiguousarray(output, dtype=str(out.dtype)))


def bind(runner: Runner) -> None:
    """Point ``energon.run_attention`` at ``runner`` for the VMs created from now on (a VM keeps the
    function it resolved at creation)."""
    tvm.register_global_func(BRIDGE_FUNC, partial(run_attention, runner), override=True)


def virtual_machine(executable, runner: Runner, device=None) -> relax.VirtualMachine:
    """A Relax VM for ``executable`` (an executable or a loaded library) whose offloaded calls go to
    ``runner``."""
    bind(runner)
    return relax.VirtualMachine(executable, tvm.cpu() if device is None else device)


def is_registered() -> bool:
    return tvm.get_global_func(BRIDGE_FUNC, allow_missing=True) is not None


__all__ = ["BRIDGE_FUNC", "CallRecord", "Runner", "bind", "is_registered", "run_attention", "virtual_machine"]
