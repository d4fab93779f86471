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


class BufferOverflow(SimulatorTrap):
    kind = "buffer overflow"


class UninitializedRead(SimulatorTrap):
    kind = "read of never-written buffer data"


class Deadlock(SimulatorTrap):
    kind = "dependency deadlock"


class InstructionBudgetExceeded(SimulatorTrap):
    kind = "instruction budget exceeded"
