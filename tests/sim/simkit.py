"""Helpers for simulator tests: build small programs by hand."""

import numpy as np
from energon_tvm.isa.instructions import Reg, make
from energon_tvm.isa.program import MemoryMap, Program, Region


def header(d=32, sq=16, sk=16, v_offset=0, shift=0, kv_stride=None):
    """The SETR header; KV_STRIDE is set only when given (left at 0, K rows and V rows are packed)."""
    return [make("SETR", reg=Reg.HEAD_DIM, value=d), make("SETR", reg=Reg.SEQ_Q, value=sq),
            make("SETR", reg=Reg.SEQ_K, value=sk), make("SETR", reg=Reg.V_OFFSET, value=v_offset),
            make("SETR", reg=Reg.CAUSAL_SHIFT, value=shift & 0xFFFFFFFF)] + \
        ([] if kv_stride is None else [make("SETR", reg=Reg.KV_STRIDE, value=kv_stride)])


def program(cfg, body, regions=(), **hdr):
    """header + body + HALT; ``regions`` name DRAM spans for statistics."""
    mm = MemoryMap(tuple(Region(n, off, dt, shape, "test") for n, off, dt, shape in regions))
    return Program.build(cfg, header(**hdr) + list(body) + [make("HALT")], mm)


def image(*chunks, size=1 << 16):
    """A DRAM image with ``(offset, array)`` chunks written in."""
    img = np.zeros(size, np.uint8)
    for off, arr in chunks:
        raw = np.ascontiguousarray(arr).view(np.uint8).reshape(-1)
        img[off:off + raw.size] = raw
    return img


def sync(unit, token, what="SIGNAL"):
    return make(what, unit=int(unit), token=token)
