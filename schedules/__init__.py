"""Mapping attention onto the Energon machine: workloads, schedules (tiling, buffering, run-ahead),
their tiling plans, program emission and dependency analysis. Imports only ``energon_tvm.isa``, never
TVM; the autotuner, which measures schedules on the simulator, is ``energon_tvm.tuner``."""

from .bounds import CallBound, call_bound, call_bound_from_counts, call_bound_from_stats, total_bound
from .emit import ProgramCounter, emit_program, plan_memory
from .schedule import (
    BufferPlan,
    Schedule,
    TilingPlan,
    buffer_usage,
    check_fits,
    default_schedule,
    dense_workload,
    fits,
    plan_tiling,
)
from .validate import check_program
from .workload import AttentionWorkload

__all__ = [
    "AttentionWorkload",
    "BufferPlan",
    "CallBound",
    "ProgramCounter",
    "Schedule",
    "TilingPlan",
    "buffer_usage",
    "call_bound",
    "call_bound_from_counts",
    "call_bound_from_stats",
    "total_bound",
    "check_fits",
    "check_program",
    "default_schedule",
    "dense_workload",
    "emit_program",
    "fits",
    "plan_memory",
    "plan_tiling",
]
