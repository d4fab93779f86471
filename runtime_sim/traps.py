"""Traps: the typed errors a program can raise on the simulated machine.

Every trap carries the program counter and the instruction, so a user sees exactly which word of
which program went wrong. No input can make the simulator crash, hang or answer silently wrong.
"""

from __future__ import annotations

from ..isa.errors import EnergonError
from ..isa.instructions import Instruction


def format_instruction(ins: Instruction) -> str:
    args = " ".join(f"{k}={v}" for k, v in ins.as_dict().items())
    return f"{ins.op.mnemonic.lower()} {args}".strip()


class SimulatorTrap(EnergonError):
    """Base of every trap; ``pc`` is the index of the faulting instruction (None: the whole program)."""

    kind = "trap"

    def __init__(self, message: str, pc: int | None = None, ins: Instruction | None = None):
        self.pc = pc
        self.instruction = ins
        self.detail = message
        where = "" if pc is None else f"pc {pc}"
        if ins is not None:
            where += f" ({format_instruction(ins)})"
        super().__init__(f"{self.kind}: {message}" + (f" at {where}" if where else ""))


class IllegalInstruction(SimulatorTrap):
    kind = "illegal instruction"


class DramOutOfRange(SimulatorTrap):
    kind = "DRAM address out of range"


class RegionViolation(DramOutOfRange):
    """A DMA transfer outside the memory-map region it starts in, in no region at all, or in a region
    that holds another element type than the instruction moves."""

    kind = "DRAM access outside its memory-map region"


class MisalignedAccess(SimulatorTrap):
    """A DRAM or on-chip buffer address that is not a multiple of the element size it is accessed as."""

    kind = "misaligned access"


class BufferOverflow(SimulatorTrap):
    kind = "buffer overflow"


class UninitializedRead(SimulatorTrap):
    kind = "read of never-written buffer data"


class NumericFault(SimulatorTrap):
    """A value no valid program computes with: non-finite head parameters, a zero scale used as a
    divisor, a NaN or infinity produced on the way to the output."""

    kind = "non-finite value"


class Deadlock(SimulatorTrap):
    kind = "dependency deadlock"


class InstructionBudgetExceeded(SimulatorTrap):
    kind = "instruction budget exceeded"
