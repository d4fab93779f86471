"""Errors of the command line and its Python API. Every user mistake is a :class:`TVMCError` (or another
:class:`~energon_tvm.isa.errors.EnergonError`): ``tvmc`` prints its message on one line and exits
non-zero, with the traceback only under ``-v``."""

from __future__ import annotations

from ..isa.errors import EnergonError


class TVMCError(EnergonError):
    """A bad command line, model, input file or package."""


class PackageError(TVMCError):
    """A package that is corrupt, tampered with, unsafe to extract or from an incompatible version."""
