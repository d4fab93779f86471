"""The machine contract of the Energon co-processor: hardware configs, number formats, the instruction
table, its binary encoding, the program container, assembler and disassembler. Never imports TVM."""

from .config import BUFFERS, EnergyTable, HardwareConfig, load_config
from .errors import (
    AssemblerError,
    BinaryFormatError,
    ConfigError,
    EncodingError,
    EnergonError,
    ScheduleError,
)

__all__ = [
    "BUFFERS",
    "AssemblerError",
    "BinaryFormatError",
    "ConfigError",
    "EncodingError",
    "EnergonError",
    "EnergyTable",
    "HardwareConfig",
    "ScheduleError",
    "load_config",
]
