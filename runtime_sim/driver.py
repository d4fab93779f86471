"""The host side of one offloaded attention call: lay inputs out in DRAM as the program's memory map
says, run the program, read the output back. This is what the TVM runtime bridge calls.

Memory-map regions (by name) a program for attention uses:

* ``param``   float64 [heads, 2]: per head slot (b-major), ``qk_scale = sq * sk * scale`` and ``sv``
* ``q``       int16 [B, H, Sq, D]
* ``kplanes`` uint8 [B, H, 16, Sk, D/8]: the bit-planes of K's INT16 codes, sign plane first
* ``kv``      int16 [B, H, Sk, 2, D]: each key's K row, then its V row (V_OFFSET = D * 2, KV_STRIDE = D * 4)
* ``bias``    float32 [Bb, Hb, Sqb, Sk]: the model's mask/bias as given (broadcast dims kept at 1)
* ``out``     float32 [B, H, Sq, D]
"""

from __future__ import annotations

import numpy as np

from ..isa.config import HardwareConfig
from ..isa.errors import EnergonError
from ..isa.numerics import quantize_int16, to_bitplanes
from ..isa.program import Program
from .machine import Decoded, SimResult, Simulator


class DriverError(EnergonError, ValueError):
    """Inputs that do not match the program they are run with."""


def _expect(name: str, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x)
    if x.shape != tuple(shape):
        raise DriverError(f"{name} has shape {list(x.shape)}; the program was compiled for {list(shape)}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DriverError(f"{name} must be floating point, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise DriverError(f"{name} contains NaN or infinite values")
    return x


def layout_inputs(program: Program, q, k, v, bias=None) -> np.ndarray:
    """Quantise Q/K/V to INT16 (one scale per batch and head), build K's bit-planes and the per-head
    scale table, and return the DRAM image the program expects."""
    mm = program.memory_map
    scale = float(program.meta["scale"])
    q = _expect("q", q, mm["q"].shape)
    kv_shape = mm["kv"].shape
    k = _expect("k", k, kv_shape[:3] + kv_shape[4:])
    v = _expect("v", v, kv_shape[:3] + kv_shape[4:])
    image = np.zeros(mm.extent, np.uint8)

    def put(name: str, arr: np.ndarray) -> None:
        region = mm[name]
        data = np.ascontiguousarray(arr, dtype=region.dtype).reshape(region.shape)
        image[region.offset:region.end] = data.view(np.uint8).reshape(-1)

    q16, sq = quantize_int16(q)
    k16, sk = quantize_int16(k)
    v16, sv = quantize_int16(v)
    put("q", q16)
    put("kv", np.stack([k16, v16], axis=3))
    put("kplanes", to_bitplanes(k16))
    put("param", np.stack([(sq * sk * scale).reshape(-1), sv.reshape(-1)], axis=-1))
    if "bias" in mm:
        if bias is None:
            raise DriverError("the program was compiled with a mask/bias input but none was given")
        region = mm["bias"]
        bias = np.asarray(bias)
        if np.any(np.isnan(bias)):
            raise DriverError("mask/bias contains NaN")
        b4 = bias.reshape((1,) * (4 - bias.ndim) + bias.shape) if bias.ndim <= 4 else bias
        try:
            put("bias", np.broadcast_to(b4, region.shape))
        except ValueError:
            raise DriverError(f"mask/bias of shape {list(bias.shape)} does not broadcast to the compiled "
                              f"{list(region.shape)}") from None
    elif bias is not None:
        raise DriverError("a mask/bias was given but the program was compiled without one")
    return image


def read_output(program: Program, result: SimResult) -> np.ndarray:
    region = program.memory_map["out"]
    raw = result.dram.data[region.offset:region.end]
    return raw.view(np.float32).reshape(region.shape).copy()


def run_attention(program: Program, cfg: HardwareConfig, q, k, v, bias=None, *, trace: bool = False,
                  capture: bool = False, simulator: Simulator | None = None,
                  decoded: Decoded | None = None) -> tuple[np.ndarray, SimResult]:
    """Run one attention program on Q [B,H,Sq,D], K/V [B,H,Sk,D] (and the mask/bias if compiled with
    one); returns the output [B,H,Sq,D] float32 and the run's :class:`SimResult`. ``simulator`` and
    ``decoded`` (its :meth:`Simulator.decode` of ``program``): a caller's, made once for many runs."""
    image = layout_inputs(program, q, k, v, bias)
    sim = simulator or Simulator(cfg)
    result = sim.run(program, image, trace=trace, capture=capture, decoded=decoded)
    return read_output(program, result), result
