"""What one instruction did, as counts, and the cycle model that turns counts into time.

Handlers in :mod:`.semantics` report a :class:`Work`; the engine turns it into cycles with
:func:`cycles` and into energy with :mod:`.energy`. Keeping counts apart from time is what makes the
timing explainable line by line and the timing-only mode exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..isa.config import HardwareConfig
from ..isa.instructions import Unit


@dataclass(slots=True)
class Work:
    #: DRAM segments moved, in batches (addresses, byte counts, is_write), each an int (one segment) or
    #: an int64 array (one per segment); one request per segment
    segments: list = field(default_factory=list)
    fu_macs: int = 0          # low-bit multiply-accumulates
    fu_passes: int = 1        # native multiplier passes per MAC at this precision
    fu_precision: str = ""    # e.g. "int4xint2"
    compares: int = 0         # threshold / mask compares of the Filtering Unit (a select's: ThresholdRule.compares)
    au_macs: int = 0          # INT16 multiply-accumulates (Q.K and P.V)
    exps: int = 0             # softmax exponentials
    norms: int = 0            # final normalisation multiplies
    sram_read: dict = field(default_factory=dict)
    sram_write: dict = field(default_factory=dict)

    def dram(self, addr, nbytes, is_write: bool = False) -> None:
        """Record DRAM segments: one address and size, or equal-length arrays of them."""
        if isinstance(nbytes, np.ndarray):
            self.segments.append((np.asarray(addr, np.int64), nbytes.astype(np.int64, copy=False), is_write))
        else:
            self.segments.append((int(addr), int(nbytes), is_write))

    def read(self, buf: str, nbytes: int) -> None:
        self.sram_read[buf] = self.sram_read.get(buf, 0) + int(nbytes)

    def wrote(self, buf: str, nbytes: int) -> None:
        self.sram_write[buf] = self.sram_write.get(buf, 0) + int(nbytes)


def dram_transfer_cycles(work: Work, cfg: HardwareConfig) -> float:
    """Cycles the DRAM channel is busy: per segment, a request overhead plus whole bursts."""
    bursts = requests = 0
    for _a, n, _w in work.segments:
        if isinstance(n, int):
            bursts, requests = bursts - (-n // cfg.dram_burst_bytes), requests + 1
        else:
            bursts, requests = bursts + int((-(-n // cfg.dram_burst_bytes)).sum()), requests + n.size
    return requests * cfg.dram_request_cycles + bursts * cfg.dram_burst_cycles


def compute_cycles(unit: Unit, work: Work, cfg: HardwareConfig) -> int:
    """Busy cycles of a Filtering or Attention Unit instruction (at least 1)."""
    if unit == Unit.FILTER:
        cycles = (math.ceil(work.fu_macs * work.fu_passes / cfg.fu_macs_per_cycle)
                  + math.ceil(work.compares / cfg.fu_select_per_cycle))
        return max(1, cycles)
    if unit == Unit.ATTEND:
        if not (work.au_macs or work.exps or work.norms):
            return 1
        return (max(math.ceil(work.au_macs / cfg.au_macs_per_cycle), math.ceil(work.exps / cfg.au_exp_per_cycle))
                + math.ceil(work.norms / cfg.au_macs_per_cycle) + cfg.au_pipeline_cycles)
    raise ValueError(f"{unit.label} instructions are timed by the DRAM model")
