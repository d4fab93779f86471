"""Binary encoding of instructions, derived from the declarations in :mod:`.instructions`."""

from __future__ import annotations

from functools import lru_cache

from .config import HardwareConfig
from .errors import BinaryFormatError, EncodingError
from .instructions import BY_OPCODE, OPCODE_BITS, WORD_BITS, WORD_BYTES, Instruction, OpSpec


@lru_cache(maxsize=256)
def _layout(op: OpSpec, cfg: HardwareConfig):
    layout = [(f, pos, n, *f.bounds(cfg)) for f, pos, n in op.layout(cfg)]
    end = layout[-1][1] + layout[-1][2] if layout else OPCODE_BITS
    if end > WORD_BITS:  # pragma: no cover - a declaration error, caught by the test suite
        raise EncodingError(f"{op.mnemonic} needs {end} bits on config {cfg.name!r}; words have {WORD_BITS}")
    return layout, end


def check_fields(ins: Instruction, cfg: HardwareConfig) -> None:
    """Raise :class:`EncodingError` naming the first field whose value is out of its legal range."""
    layout, _ = _layout(ins.op, cfg)
    if len(ins.args) != len(layout):
        raise EncodingError(f"{ins.op.mnemonic} takes {len(layout)} fields, got {len(ins.args)}")
    for (f, _pos, n, lo, hi), value in zip(layout, ins.args):
        if not lo <= value <= hi:
            raise EncodingError(f"{ins.op.mnemonic}: field {f.name} = {value} is outside {lo}..{hi} "
                                f"({n}-bit field on config {cfg.name!r})")


def encode(ins: Instruction, cfg: HardwareConfig) -> bytes:
    """One 256-bit little-endian instruction word."""
    check_fields(ins, cfg)
    layout, _ = _layout(ins.op, cfg)
    word = ins.op.opcode
    for (_f, pos, n, _lo, _hi), value in zip(layout, ins.args):
        word |= (value & ((1 << n) - 1)) << pos
    return word.to_bytes(WORD_BYTES, "little")


def decode(word: bytes, cfg: HardwareConfig, offset: int = 0) -> Instruction:
    """Decode one word; ``offset`` (its byte offset in the binary) goes into error messages."""
    if len(word) != WORD_BYTES:
        raise BinaryFormatError(f"instruction word of {len(word)} bytes; words are {WORD_BYTES}", offset)
    value = int.from_bytes(word, "little")
    opcode = value & ((1 << OPCODE_BITS) - 1)
    op = BY_OPCODE.get(opcode)
    if op is None:
        raise BinaryFormatError(f"unknown opcode {opcode:#04x}", offset)
    layout, end = _layout(op, cfg)
    if value >> end:
        raise BinaryFormatError(f"{op.mnemonic}: reserved bits {end}..{WORD_BITS - 1} are not zero "
                                f"(they hold {value >> end:#x})", offset)
    args = []
    for f, pos, n, lo, hi in layout:
        raw = (value >> pos) & ((1 << n) - 1)
        if f.signed and raw >> (n - 1):
            raw -= 1 << n
        if not lo <= raw <= hi:
            raise BinaryFormatError(f"{op.mnemonic}: field {f.name} = {raw} is outside {lo}..{hi}", offset)
        args.append(raw)
    return Instruction(op, tuple(args))


def encode_code(code, cfg: HardwareConfig) -> bytes:
    return b"".join(encode(ins, cfg) for ins in code)


def decode_code(blob: bytes, cfg: HardwareConfig, base_offset: int = 0) -> tuple[Instruction, ...]:
    if len(blob) % WORD_BYTES:
        raise BinaryFormatError(f"code section of {len(blob)} bytes is not a whole number of "
                                f"{WORD_BYTES}-byte words", base_offset)
    return tuple(decode(blob[i:i + WORD_BYTES], cfg, base_offset + i) for i in range(0, len(blob), WORD_BYTES))
