"""The runtime bridge: the TVM global function every offloaded call site calls, and the run collector.

A partitioned module calls ``R.call_dps_packed("energon.run_attention", (q, k, v, [bias], meta, blob),
out)`` with Q/K/V in [B,H,S,D] and the bias in [B,H,Sq,Sk] broadcast form (the lowering emits the layout
ops), ``meta`` a JSON string {"site", "workload"} and ``blob`` the call's program as uint8. The bridge
hands the blob to :func:`energon_tvm.executor.run_call` and writes its output into ``out``.

The function lives in this Python process's TVM registry, not in the compiled library: a VM made from
an exported library can only be created after :func:`register` ran in the process (importing this
module runs it). Per-call statistics go to every active :class:`RunCollector`::

    with collect(capture=True) as run:
        vm["main"](*inputs)
    run.calls[0].stats["kept_ratio"], run.calls[0].inputs["q"], run.calls[0].output
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import numpy as np
import tvm

from .. import executor
from ..schedules.workload import AttentionWorkload

BRIDGE_FUNC = "energon.run_attention"


@dataclass(frozen=True)
class CallRecord:
    """One executed offloaded call. ``inputs`` (q, k, v, bias as float32 [B,H,S,D] / bias or None)
    and ``output`` are set when the collector captures."""

    site: str
    workload: AttentionWorkload
    stats: dict
    inputs: dict | None = None
    output: np.ndarray | None = None


class RunCollector:
    """Collects a :class:`CallRecord` for every bridge call while active (a context manager)."""

    def __init__(self, capture: bool = False):
        self.capture = capture
        self.calls: list[CallRecord] = []

    def __enter__(self) -> RunCollector:
        _active().append(self)
        return self

    def __exit__(self, *exc) -> None:
        stack = _active()
        if self in stack:
            stack.remove(self)

    def by_site(self) -> dict[str, list[CallRecord]]:
        out: dict[str, list[CallRecord]] = {}
        for call in self.calls:
            out.setdefault(call.site, []).append(call)
        return out

    def summary(self) -> dict:
        """Calls, and the kept ratio over all calls (kept pairs / candidate pairs)."""
        candidates = sum(c.stats.get("candidates", 0) for c in self.calls)
        kept = sum(c.stats.get("kept", 0) for c in self.calls)
        return {"calls": len(self.calls), "candidates": candidates, "kept": kept,
                "final_kept_ratio": kept / candidates if candidates else 0.0}


_local = threading.local()


def _active() -> list[RunCollector]:
    if not hasattr(_local, "collectors"):
        _local.collectors = []
    return _local.collectors


def collect(capture: bool = False) -> RunCollector:
    """A collector to use as ``with collect() as run: ...``; ``capture`` keeps each call's numpy
    inputs and output."""
    return RunCollector(capture=capture)


def _as_float32(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.numpy(), dtype=np.float32)


def run_attention(*args) -> None:
    """The packed function behind ``energon.run_attention`` (DPS: the last argument is the output)."""
    if len(args) not in (6, 7):
        raise TypeError(f"{BRIDGE_FUNC} takes (q, k, v, [bias], meta, blob, out); got {len(args)} "
                        f"arguments")
    q, k, v = (_as_float32(t) for t in args[:3])
    bias = _as_float32(args[3]) if len(args) == 7 else None
    meta = json.loads(str(args[-3]))
    blob = args[-2].numpy().tobytes()
    out = args[-1]
    output, stats = executor.run_call(blob, q, k, v, bias)
    out.copyfrom(np.ascontiguousarray(output, dtype=str(out.dtype)))
    collectors = _active()
    if collectors:
        workload = AttentionWorkload.from_dict(meta["workload"])
        for collector in collectors:
            inputs = {"q": q, "k": k, "v": v, "bias": bias} if collector.capture else None
            collector.calls.append(CallRecord(str(meta.get("site")), workload, dict(stats), inputs,
                                              output.copy() if collector.capture else None))


def register() -> None:
    """Register the bridge as the TVM global function ``energon.run_attention`` (idempotent: a
    second call re-registers the same function)."""
    tvm.register_global_func(BRIDGE_FUNC, run_attention, override=True)


def is_registered() -> bool:
    return tvm.get_global_func(BRIDGE_FUNC, allow_missing=True) is not None


register()
