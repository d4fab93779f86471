"""The Energon co-processor, simulated: functional + cycle + energy model, traces and reports.
Never imports TVM."""

from .driver import DriverError, layout_inputs, read_output, run_attention
from .machine import Decoded, SimResult, Simulator
from .profile import SparsityProfile
from .traps import (
    BufferOverflow,
    Deadlock,
    DramOutOfRange,
    IllegalInstruction,
    InstructionBudgetExceeded,
    MisalignedAccess,
    NumericFault,
    RegionViolation,
    SimulatorTrap,
    UninitializedRead,
)

__all__ = [
    "BufferOverflow",
    "Deadlock",
    "Decoded",
    "DramOutOfRange",
    "DriverError",
    "IllegalInstruction",
    "InstructionBudgetExceeded",
    "MisalignedAccess",
    "NumericFault",
    "RegionViolation",
    "SimResult",
    "Simulator",
    "SimulatorTrap",
    "SparsityProfile",
    "UninitializedRead",
    "layout_inputs",
    "read_output",
    "run_attention",
]
