"""Errors of the command line and its Python API. Every user mistake is a :class:`TVMCError` (or another
:class:`~energon_tvm.isa.errors.EnergonError`): ``tvmc`` prints its message on one line and exits
non-zero, with the traceback only under ``-v``."""

from __future__ import annotations

from ..isa.errors import EnergonError


class TVMCError(EnergonError):
    """A bad command line, model, input file or package."""


class PackageError(TVMCError):
    """A package that is corrupt, tampered with, unsafe to extract or from an incompatible version."""


def open_user_file(path, what: str, error: type[TVMCError] = TVMCError):
    """``open(path, "rb")`` of a file the user named, with a missing or unreadable file as one ``error``
    line naming ``what`` it is (``"package"``, ``"inputs file"``)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} does not exist") from None
    except OSError as err:
        raise error(f"cannot open {what} {str(path)!r}: {err.strerror or err}") from None
