"""The tuner's typed errors: every rejection of a user's option, file or cluster address.

All derive from :class:`~energon_tvm.isa.errors.EnergonError`, so ``tvmc`` maps them to a one-line
message and a non-zero exit status like every other user mistake.
"""

from __future__ import annotations

from ..isa.errors import EnergonError


class TuningError(EnergonError, ValueError):
    """A tuning option out of range (trials < 1, an unknown tuner name, an empty search space, ...)."""


class RecordsError(EnergonError, ValueError):
    """A tuning-records file that is missing, not JSON lines, or holds a record without its fields;
    the message names the file and the 1-based line."""


class ClusterError(EnergonError, ConnectionError):
    """The Dask scheduler given for distributed measurement cannot be reached in time."""
