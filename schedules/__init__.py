"""Mapping attention onto the Energon machine: workloads, schedules (tiling, buffering, run-ahead),
program emission, dependency analysis and the autotuner. Never imports TVM."""

from .emit import emit_program, plan_memory
from .schedule import Schedule, buffer_usage, check_fits, default_schedule, dense_workload, fits
from .workload import AttentionWorkload

__all__ = [
    "AttentionWorkload",
    "Schedule",
    "buffer_usage",
    "check_fits",
    "default_schedule",
    "dense_workload",
    "emit_program",
    "fits",
    "plan_memory",
]
