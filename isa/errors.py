"""The project's error hierarchy.

Every rejection of user input (a model, a binary, a config, a shape the hardware cannot take) raises a
subclass of :class:`EnergonError`, naming what was wrong, the value seen and the limit. The command line
maps these to a one-line message and a non-zero exit status; anything else is a bug in energon-tvm.
"""

from __future__ import annotations


class EnergonError(Exception):
    """Base class of every error energon-tvm raises for bad input or an impossible request."""


class ConfigError(EnergonError, ValueError):
    """A hardware configuration is missing, malformed or violates one of its rules."""


class BinaryFormatError(EnergonError):
    """A program binary is truncated, corrupt, of an unknown version, or made for another machine."""

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        super().__init__(message if offset is None else f"byte {offset}: {message}")


class EncodingError(EnergonError, ValueError):
    """An instruction field holds a value its encoding cannot represent."""


class AssemblerError(EnergonError):
    """Assembler text that cannot be parsed; carries the 1-based line number."""

    def __init__(self, message: str, line: int | None = None):
        self.line = line
        super().__init__(message if line is None else f"line {line}: {message}")


class ScheduleError(EnergonError):
    """A workload or schedule the machine cannot take (a tile that does not fit a buffer, a head dim
    wider than the datapath, ...)."""
