"""The host half of a build: everything Energon does not run, compiled for the CPU by TVM.

TVM's CPU pipeline legalises Relax ops to TIR but leaves every loop nest as written: one thread, one
element at a time, about 2 s per all-MiniLM inference on this project's machine. This module inserts
default schedules between legalisation and lowering, as TVM's GPU pipelines do with dlight, so that a
model builds in seconds and runs without tuning:

* :class:`Matmul` -- a fused ``matmul`` (+ elementwise epilogue): rows in blocks of 4 and columns in
  vector-width blocks with the reduction between them (the 4 x w accumulator tile stays in registers),
  the outer loops parallel, the epilogue parallel and vectorised;
* TVM's ``dl.cpu.Reduction`` for softmax and layer norm;
* :class:`Injective` -- element-wise and layout ops: parallel outer loops, vectorised inner loop.

The schedules reorder loops only: for the generic target the outputs equal TVM's unscheduled build
bit for bit (tested); for a given ``mcpu`` LLVM may fuse multiply-adds, which moves the last bits.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

_SPATIAL, _REDUCE = tirx.IterVar.DataPar, tirx.IterVar.CommReduce


def host_target(mcpu: str | None = None) -> tvm.target.Target:
    """The llvm host target: generic x86-64 (a package runs on any such CPU) unless ``mcpu`` is given."""
    return tvm.target.Target({"kind": "llvm", "mcpu": mcpu} if mcpu else "llvm")


def valid_mcpu(mcpu: str) -> bool:
    from tvm.target import codegen

    return bool(codegen.llvm_is_valid_cpu(mcpu, codegen.llvm_get_system_triple()))


def build(mod: tvm.IRModule, mcpu: str | None = None):
    """``tvm.compile`` of ``mod`` for the host, with the default schedules of this module."""
    target = host_target(mcpu)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline(target))


def pipeline(target: tvm.target.Target):
    """TVM's CPU pipeline with :func:`schedules` applied after legalisation."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="EnergonHostPipeline")
    def _pipeline(mod, _ctx):
        with target:
            passes = (cpu.library_dispatch_passes(target) + cpu.legalize_passes(target) + [schedules()]
                      + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


def schedules():
    return dl.ApplyDefaultSchedule(Matmul(), dl.cpu.Reduction(), Injective())


def _extent(sch, loop) -> int | None:
    extent = sch.get(loop).extent
    return int(extent.value) if isinstance(extent, tirx.IntImm) else None


def _factor(extent: int | None, choices=(16, 8, 4)) -> int | None:
    """The largest of ``choices`` dividing ``extent`` (a split without a tail), or None."""
    return next((f for f in choices if extent and extent % f == 0), None)


def _kinds(sch, block) -> str:
    return "".join("S" if iv.iter_type == _SPATIAL else "R" if iv.iter_type == _REDUCE else "O"
                   for iv in sch.get(block).iter_vars)


def _parallel_vectorised(sch, block) -> None:
    """Outer loops fused and parallel, the innermost vectorised when it splits evenly."""
    loops = sch.get_loops(block)
    if not loops:
        return
    width = _factor(_extent(sch, loops[-1]))
    if width is not None:
        sch.vectorize(sch.split(loops[-1], [None, width])[1])
        outer = sch.get_loops(block)[:-1]
    else:
        outer = loops[:-1] or loops
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


class _HostRule(CPUScheduleRule):
    """A rule for llvm targets; ``schedule(func)`` returns a schedule or None when the kernel is not its
    kind. A kernel of a shape the rule did not foresee keeps TVM's plain loops: if a primitive refuses,
    the rule steps back rather than failing the build."""

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return self.schedule(func)
        except RuntimeError:  # ScheduleError and TVM's internal errors
            return None

    def schedule(self, func) -> s_tir.Schedule | None:
        raise NotImplementedError


class Matmul(_HostRule):
    """A PrimFunc whose one reduction is a ``matmul`` block ([..., M, N] over K) followed by
    element-wise blocks (bias, scale, activation, residual)."""

    def schedule(self, func):
        sch = s_tir.Schedule(func)
        blocks = _blocks(sch)
        reductions = [b for b in blocks if "R" in _kinds(sch, b)]
        if len(reductions) != 1 or sch.get(reductions[0]).name_hint != "matmul":
            return None
        block = reductions[0]
        if not _kinds(sch, block).endswith("SSR") or _kinds(sch, block).count("R") != 1:
            return None
        epilogue = [b for b in blocks if not sch.get(b).same_as(sch.get(block))]
        if not sch.get(blocks[0]).same_as(sch.get(block)):
            return None  # a prologue before the matmul: leave it to another rule
        for b in epilogue[:-1]:
            sch.compute_inline(b)
        *batch, i, j, k = sch.get_loops(block)
        rows, width = _factor(_extent(sch, i), (4, 2)), _factor(_extent(sch, j))
        if rows is None or width is None:
            return None
        io, ii = sch.split(i, [None, rows])
        jo, ji = sch.split(j, [None, width])
        sch.reorder(*batch, io, jo, k, ii, ji)
        sch.parallel(sch.fuse(*batch, io) if batch else io)
        init = sch.decompose_reduction(block, k)
        sch.unroll(ii)  # ji stays serial: LLVM vectorises the unit-stride update loop itself
        sch.vectorize(sch.get_loops(init)[-1])
        if epilogue:
            _parallel_vectorised(sch, epilogue[-1])
        return sch


class Injective(_HostRule):
    """A PrimFunc of spatial blocks only (element-wise, transpose, reshape, gather)."""

    def schedule(self, func):
        sch = s_tir.Schedule(func)
        if any(set(_kinds(sch, b)) - {"S"} for b in _blocks(sch)):
            return None
        for b in _blocks(sch)[:-1]:
            try:
                sch.compute_inline(b)
            except s_tir.ScheduleError:
                pass  # e.g. a block whose result is read twice: it keeps its own loop nest
        for b in _blocks(sch):
            _parallel_vectorised(sch, b)
        return sch
