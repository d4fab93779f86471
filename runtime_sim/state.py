"""Architectural state of the simulated machine: DRAM and the map of what it holds, the on-chip
buffers, registers and the per-lane state of the threshold unit and the Attention Unit."""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from ..isa.config import BUFFERS, PARAM_BYTES_PER_HEAD, HardwareConfig
from ..isa.instructions import Reg
from ..isa.program import MemoryMap
from .traps import BufferOverflow, DramOutOfRange, MisalignedAccess, RegionViolation, UninitializedRead

MEMO_ENTRIES = 64  # decoded values a buffer keeps (see Sram.decoded) before it starts over

#: what each on-chip buffer holds, and so the alignment of every access to it: (bytes, element)
BUFFER_ELEMENTS = {"q": (2, "int16"), "kplane": (1, "uint8"), "score": (4, "int32"), "index": (1, "uint8"),
                   "kv": (2, "int16"), "out": (4, "float32"), "bias": (4, "float32"),
                   # read a whole descriptor at a time (head h at h * 16): FP64 qk_scale and sv
                   "param": (PARAM_BYTES_PER_HEAD, "head descriptor")}
ELEMENT_BYTES = {"int16": 2, "uint8": 1, "float32": 4, "float64": 8}


class Sram:
    """One on-chip buffer: bytes plus a written-mask so reads of never-written data trap."""

    def __init__(self, name: str, capacity: int):
        self.name = name
        self.capacity = capacity
        self.align, self.element = BUFFER_ELEMENTS[name]
        self.data = np.zeros(capacity, np.uint8)
        self.written = np.zeros(capacity, bool)
        self._memo: dict = {}  # (addr, nbytes, how) -> value decoded from those bytes

    def check_aligned(self, addr: int, pc) -> None:
        if addr % self.align:
            raise MisalignedAccess(f"{self.name} buffer address {addr:#x} is not a multiple of {self.align}: the "
                                   f"{self.name} buffer holds {self.element} elements", pc)

    def _check(self, addr: int, nbytes: int, pc) -> None:
        if addr % self.align:
            self.check_aligned(addr, pc)
        if addr < 0 or addr + nbytes > self.capacity:
            raise BufferOverflow(f"{self.name} buffer access of {nbytes} bytes at {addr:#x} ends at "
                                 f"{addr + nbytes:#x}; the {self.name} buffer has {self.capacity} bytes", pc)

    def read(self, addr: int, nbytes: int, pc, check_written: bool = True) -> np.ndarray:
        self._check(addr, nbytes, pc)
        if check_written and not self.written[addr:addr + nbytes].all():
            first = addr + int(np.argmin(self.written[addr:addr + nbytes]))
            raise UninitializedRead(f"{self.name} buffer byte {first:#x} (in {addr:#x}..{addr + nbytes - 1:#x}) "
                                    f"was never written", pc)
        return self.data[addr:addr + nbytes]

    def write(self, addr: int, payload: np.ndarray, pc) -> None:
        payload = np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        self._check(addr, payload.size, pc)
        self.data[addr:addr + payload.size] = payload
        self.written[addr:addr + payload.size] = True
        self.touched(addr, payload.size)

    def touched(self, addr: int, nbytes: int) -> None:
        """Note a write to ``[addr, addr + nbytes)``: forget the values decoded from any of those bytes."""
        end = addr + nbytes
        stale = [key for key in self._memo if key[0] < end and addr < key[0] + key[1]]
        for key in stale:
            del self._memo[key]

    def decoded(self, addr: int, nbytes: int, how, load):
        """``load()``, a value computed from the bytes in ``[addr, addr + nbytes)`` (it does its own checked
        read), memoised under ``how`` until any of those bytes is written again: an operand tile serves
        many instructions, and decoding it for each would dominate the run. Writes are rarer than reads,
        so a write drops what it overlaps and a read is one dictionary lookup."""
        key = (addr, nbytes, how)
        value = self._memo.get(key)
        if value is None:
            value = load()
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            self._memo[key] = value
        return value

    def reserve(self, addr: int, nbytes: int, pc) -> None:
        """Timing-only runs: mark a destination written without moving data."""
        self._check(addr, nbytes, pc)
        self.written[addr:addr + nbytes] = True
        self.touched(addr, nbytes)

    # strided row access: ``rows`` rows of ``width`` bytes, ``stride`` bytes apart
    def _rows_index(self, addr: int, rows: int, width: int, stride: int, pc) -> np.ndarray:
        last = addr + (rows - 1) * stride + width
        if addr < 0 or last > self.capacity:
            raise BufferOverflow(f"{self.name} buffer access of {rows} rows x {width} bytes (stride {stride}) "
                                 f"at {addr:#x} ends at {last:#x}; the {self.name} buffer has {self.capacity} "
                                 f"bytes", pc)
        return addr + np.arange(rows)[:, None] * stride + np.arange(width)[None, :]

    def _rows(self, array: np.ndarray, addr: int, rows: int, width: int, stride: int, pc):
        """[rows, width] of ``array`` (data or written-mask): a strided view where the rows fit, else a
        gather (the last row may end before a full stride does)."""
        if addr >= 0 and addr + rows * stride <= self.capacity and width <= stride:
            return array[addr:addr + rows * stride].reshape(rows, stride)[:, :width]
        return array[self._rows_index(addr, rows, width, stride, pc)]

    def read_rows(self, addr: int, rows: int, width: int, stride: int, pc) -> np.ndarray:
        if addr % self.align:
            self.check_aligned(addr, pc)
        written = self._rows(self.written, addr, rows, width, stride, pc)
        if not written.all():
            r, c = np.unravel_index(int(np.argmin(written)), written.shape)
            raise UninitializedRead(f"{self.name} buffer byte {addr + r * stride + c:#x} was never written", pc)
        return self._rows(self.data, addr, rows, width, stride, pc).copy()

    def write_rows(self, addr: int, payload: np.ndarray, stride: int, pc) -> None:
        rows, width = payload.shape
        if addr % self.align:
            self.check_aligned(addr, pc)
        if addr >= 0 and addr + rows * stride <= self.capacity and width <= stride:
            self.data[addr:addr + rows * stride].reshape(rows, stride)[:, :width] = payload
            self.written[addr:addr + rows * stride].reshape(rows, stride)[:, :width] = True
        else:
            idx = self._rows_index(addr, rows, width, stride, pc)
            self.data[idx] = payload
            self.written[idx] = True
        self.touched(addr, (rows - 1) * stride + width)


class Dram:
    """Byte-addressed DRAM of the config's size; pages are only touched when used."""

    def __init__(self, cfg: HardwareConfig, image: np.ndarray | None = None):
        self.size = cfg.dram_bytes
        self.data = np.zeros(self.size, np.uint8)
        if image is not None:
            if image.size > self.size:
                raise DramOutOfRange(f"DRAM image of {image.size} bytes does not fit the config's "
                                     f"{self.size} bytes")
            self.data[:image.size] = image.view(np.uint8).reshape(-1)

    def check(self, addr: int, nbytes: int, pc) -> None:
        if addr < 0 or addr + nbytes > self.size:
            raise DramOutOfRange(f"{nbytes} bytes at {addr:#x} end at {addr + nbytes:#x}, beyond DRAM size "
                                 f"{self.size:#x}", pc)

    def read(self, addr: int, nbytes: int, pc) -> np.ndarray:
        self.check(addr, nbytes, pc)
        return self.data[addr:addr + nbytes]

    def write(self, addr: int, payload: np.ndarray, pc) -> None:
        payload = np.ascontiguousarray(payload).view(np.uint8).reshape(-1)
        self.check(addr, payload.size, pc)
        self.data[addr:addr + payload.size] = payload


class DramMap:
    """Where a DMA transfer may go. It must start at a multiple of the size of the elements it moves,
    lie inside the DRAM, and stay inside the one memory-map region it starts in, a region holding
    those elements (so a transfer one byte past its region, or between two regions, traps). A program
    without regions (a hand-written test) addresses the DRAM as one untyped region. Regions are
    looked up by address (a bisection over at most a handful of starts): O(1) per transfer."""

    def __init__(self, size: int, memory_map: MemoryMap | None = None):
        self.size = size
        self.regions = sorted(memory_map.regions, key=lambda r: r.offset) if memory_map is not None else []
        self.starts = [r.offset for r in self.regions]

    def check(self, addr: int, nbytes: int, dtype: str, pc, what: str = "transfer") -> None:
        """``nbytes`` of ``dtype`` elements at ``addr``, as the transfer ``what`` moves them."""
        elem = ELEMENT_BYTES[dtype]
        if addr % elem:
            raise MisalignedAccess(f"{what} of {dtype} elements at DRAM {addr:#x}: the address is not a multiple "
                                   f"of {elem}", pc)
        end = addr + nbytes
        if addr < 0 or end > self.size:
            raise DramOutOfRange(f"{nbytes} bytes at {addr:#x} end at {end:#x}, beyond DRAM size {self.size:#x}",
                                 pc)
        if not self.regions:
            return
        i = bisect_right(self.starts, addr) - 1
        region = self.regions[i] if i >= 0 else None
        if region is None or addr >= region.end:
            raise RegionViolation(f"{what} at DRAM {addr:#x} lies in no memory-map region "
                                  f"({self._around(i)})", pc)
        if end > region.end:
            raise RegionViolation(f"{what} of {nbytes} bytes at {addr:#x} ends at {end:#x}, {end - region.end} "
                                  f"byte(s) past the end of region {region.name!r} "
                                  f"({region.offset:#x}..{region.end:#x})", pc)
        if region.dtype != dtype:
            raise RegionViolation(f"{what} moves {dtype} elements at {addr:#x}; region {region.name!r} there "
                                  f"holds {region.dtype}", pc)

    def _around(self, i: int) -> str:
        """The regions either side of a gap, for a message."""
        return ", ".join(f"{r.name!r} is {r.offset:#x}..{r.end:#x}" for r in self.regions[max(i, 0):i + 2])


class MachineState:
    """Everything a program can read or write."""

    def __init__(self, cfg: HardwareConfig, dram: Dram, memory_map: MemoryMap | None = None):
        self.cfg = cfg
        self.dram = dram
        self.dram_map = DramMap(dram.size, memory_map)
        self.buf = {name: Sram(name, cfg.buffer(name)) for name in BUFFERS}
        self.regs = {r: 0 for r in Reg}
        lanes = cfg.max_query_tile
        # threshold unit: per-row candidate count, score sum, max, min of the current round
        self.f_n = np.zeros(lanes, np.int64)
        self.f_sum = np.zeros(lanes, np.int64)
        self.f_max = np.zeros(lanes, np.int64)
        self.f_min = np.zeros(lanes, np.int64)
        self.f_valid = np.zeros(lanes, bool)
        # and the logits one score step of the round stands for (the gap rule's unit), latched with them
        self.f_unit = np.ones(lanes, np.float64)
        # attention unit: online-softmax running max, sum and accumulator per row
        self.a_m = np.full(lanes, -np.inf)
        self.a_l = np.zeros(lanes)
        self.a_acc = np.zeros((lanes, cfg.max_head_dim))
        self.a_valid = np.zeros(lanes, bool)

    @property
    def head_dim(self) -> int:
        return self.regs[Reg.HEAD_DIM]

    @property
    def seq_k(self) -> int:
        """Keys per head (SEQ_K): a whole row of the index buffer, and what a ranking select must cover."""
        return self.regs[Reg.SEQ_K]

    @property
    def index_row_bytes(self) -> int:
        return (self.seq_k + 7) // 8

