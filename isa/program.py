"""Programs and their binary container.

A :class:`Program` is the :class:`HardwareConfig` it was built for, a sequence of instructions, a
:class:`MemoryMap` (which DRAM region holds which tensor, in which layout) and metadata (the workload,
MP-MRF parameters and schedule it was built for, and per-instruction labels). A binary carries its
machine: it decodes on its own, with no config looked up anywhere. Its binary form::

    offset  size  field
    0       4     magic b"ENGN"
    4       2     container format version (u16, little-endian): 2
    6       2     ISA version (u16)
    8       16    hardware-config fingerprint
    24      2     section count n (u16): 4
    26      2     reserved, zero
    28      4     total length in bytes, checksum included (u32)
    32      12*n  section table: kind (u16), reserved (u16), offset (u32), length (u32)
    ...           section payloads, in table order, back to back
    end-8   8     checksum: the first 8 bytes of SHA-256 over everything before it

Sections, each exactly once, in this order::

    kind  section          payload
    1     code             256-bit instruction words
    2     memory map       canonical JSON, a list of regions
    3     metadata         canonical JSON, an object (no "config" entry: the config is section 4)
    4     hardware config  canonical JSON of HardwareConfig.to_dict(): every primary parameter, the
                           config's name and its energy table

Canonical JSON is sorted keys, no spaces, integers as integers, no NaN. The fingerprint in the header
is the identity check: the config in section 4 must have exactly that ``HardwareConfig.fingerprint``
(a digest of every primary parameter; the names are labels and not part of it). Loading validates every
part (the hardware config first, since the code and the memory map are checked against it), accepts
only this canonical form (so every valid binary is exactly what :meth:`Program.to_bytes` writes for the
program it decodes to) and raises :class:`BinaryFormatError` with the byte offset of the problem.
Format version 1, which recorded only the fingerprint, is refused: recompile the model.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .config import HardwareConfig
from .encoding import decode_code, encode_code
from .errors import BinaryFormatError, ConfigError, EncodingError
from .instructions import ISA_VERSION, Instruction

MAGIC = b"ENGN"
FORMAT_VERSION = 2

#: HardwareConfig fields added since format version 2 began: a binary whose config lacks one was compiled
#: for the machine model before it, and is refused with that said
LATER_CONFIG_FIELDS = ("dram_outstanding_requests",)
HEADER = struct.Struct("<4sHH16sHHI")
SECTION = struct.Struct("<HHII")
CHECKSUM_BYTES = 8
SECTION_CODE, SECTION_MEMMAP, SECTION_META, SECTION_CONFIG = 1, 2, 3, 4
SECTION_NAMES = {SECTION_CODE: "code", SECTION_MEMMAP: "memory map", SECTION_META: "metadata",
                 SECTION_CONFIG: "hardware config"}
DTYPE_BYTES = {"int16": 2, "uint8": 1, "float32": 4, "float64": 8}


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True)
class Region:
    """A tensor in simulated DRAM: ``shape`` elements of ``dtype`` at ``offset``, in ``layout``."""

    name: str
    offset: int
    dtype: str
    shape: tuple[int, ...]
    layout: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"region {self.name!r}: unknown dtype {self.dtype!r}")
        if self.offset < 0 or any(s < 1 for s in self.shape):
            raise ValueError(f"region {self.name!r}: offset {self.offset} / shape {self.shape} invalid")

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for s in self.shape:
            n *= s
        return n

    @property
    def end(self) -> int:
        return self.offset + self.nbytes

    def to_dict(self) -> dict:
        return {"name": self.name, "offset": self.offset, "dtype": self.dtype, "shape": list(self.shape),
                "layout": self.layout}


@dataclass(frozen=True)
class MemoryMap:
    """The program's DRAM regions, non-overlapping."""

    regions: tuple[Region, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise ValueError(f"memory map names a region twice: {names}")
        spans = sorted((r.offset, r.end, r.name) for r in self.regions)
        for (_a0, a1, an), (b0, _b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ValueError(f"memory map regions {an!r} and {bn!r} overlap")

    def __getitem__(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(f"memory map has no region {name!r}; regions: {[r.name for r in self.regions]}")

    def __contains__(self, name: str) -> bool:
        return any(r.name == name for r in self.regions)

    @property
    def extent(self) -> int:
        return max((r.end for r in self.regions), default=0)

    @cached_property
    def bounds(self) -> tuple[list[int], list[int], list[str]]:
        """Region starts, ends and names sorted by address, for fast address -> region lookups."""
        spans = sorted((r.offset, r.end, r.name) for r in self.regions)
        return [s[0] for s in spans], [s[1] for s in spans], [s[2] for s in spans]

    def to_list(self) -> list[dict]:
        return [r.to_dict() for r in self.regions]

    @classmethod
    def from_list(cls, items: list) -> MemoryMap:
        return cls(tuple(Region(str(d["name"]), int(d["offset"]), str(d["dtype"]), tuple(d["shape"]),
                                str(d["layout"])) for d in items))


@dataclass(frozen=True)
class Program:
    """Instructions + memory map + metadata, for one hardware config, which it carries."""

    config: HardwareConfig
    code: tuple[Instruction, ...]
    memory_map: MemoryMap
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.config, HardwareConfig):
            raise TypeError(f"Program.config must be a HardwareConfig, got {type(self.config).__name__}")
        object.__setattr__(self, "code", tuple(self.code))
        if "config" in self.meta:  # a second, possibly different, name of the machine
            raise ValueError(f"metadata has a \"config\" entry ({self.meta['config']!r:.60}); the program's "
                             f"config, name included, is Program.config")
        # metadata is JSON by contract: normalise now so a round trip compares equal
        object.__setattr__(self, "meta", json.loads(canonical_json(dict(self.meta))))

    @classmethod
    def build(cls, cfg: HardwareConfig, code, memory_map: MemoryMap, meta: dict | None = None) -> Program:
        return cls(cfg, tuple(code), memory_map, dict(meta or {}))

    @property
    def config_name(self) -> str:
        return self.config.name

    @property
    def config_fingerprint(self) -> bytes:
        return self.config.fingerprint

    @property
    def labels(self) -> list[str]:
        """Per-instruction labels (the tile each works on), as the scheduler recorded them."""
        labels = self.meta.get("labels")
        return list(labels) if isinstance(labels, list) and len(labels) == len(self.code) else []

    def to_bytes(self, cfg: HardwareConfig | None = None) -> bytes:
        """The binary. ``cfg``, accepted for callers that pass one, must be the program's machine."""
        if cfg is not None and cfg.fingerprint != self.config_fingerprint:
            raise ConfigError(f"program was built for config {self.config_name!r}; cannot encode it for "
                              f"{cfg.name!r} (fingerprints differ)")
        sections = [(SECTION_CODE, encode_code(self.code, self.config)),
                    (SECTION_MEMMAP, canonical_json(self.memory_map.to_list())),
                    (SECTION_META, canonical_json(self.meta)),
                    (SECTION_CONFIG, canonical_json(self.config.to_dict()))]
        pos = HEADER.size + SECTION.size * len(sections)
        table = b""
        for kind, payload in sections:
            table += SECTION.pack(kind, 0, pos, len(payload))
            pos += len(payload)
        total = pos + CHECKSUM_BYTES
        body = HEADER.pack(MAGIC, FORMAT_VERSION, ISA_VERSION, self.config_fingerprint, len(sections), 0,
                           total) + table + b"".join(p for _, p in sections)
        return body + hashlib.sha256(body).digest()[:CHECKSUM_BYTES]

    @classmethod
    def from_bytes(cls, blob: bytes, cfg: HardwareConfig | None = None) -> Program:
        """Validate and decode a binary; its hardware config comes from the binary itself. ``cfg``,
        when given, is a check: the binary must be for that machine (the same fingerprint).

        Only the canonical form is accepted (the bytes :meth:`to_bytes` writes for the decoded
        program): sections in the order code, memory map, metadata, hardware config, and canonical
        JSON. So a binary and its program determine each other, which the assembler's round trip
        relies on."""
        blob = bytes(blob)
        if len(blob) < HEADER.size + CHECKSUM_BYTES:
            raise BinaryFormatError(f"truncated: {len(blob)} bytes, a program has at least "
                                    f"{HEADER.size + CHECKSUM_BYTES}", len(blob))
        magic, fmt, isa, fingerprint, nsec, reserved, total = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise BinaryFormatError(f"bad magic {magic!r}, expected {MAGIC!r}: not an Energon program", 0)
        if fmt == 1:
            raise BinaryFormatError(f"container format version 1 predates programs that carry their hardware "
                                    f"config; this build reads version {FORMAT_VERSION}: recompile the model", 4)
        if fmt != FORMAT_VERSION:
            raise BinaryFormatError(f"container format version {fmt} is not supported (this build reads "
                                    f"version {FORMAT_VERSION})", 4)
        if isa != ISA_VERSION:
            raise BinaryFormatError(f"ISA version {isa} is not supported (this build implements ISA "
                                    f"version {ISA_VERSION}): recompile the model", 6)
        if reserved:
            raise BinaryFormatError(f"reserved header field is {reserved}, must be 0", 26)
        if total != len(blob):
            raise BinaryFormatError(f"header says {total} bytes but the binary has {len(blob)} "
                                    f"({'truncated' if total > len(blob) else 'trailing data'})", 28)
        body, digest = blob[:-CHECKSUM_BYTES], blob[-CHECKSUM_BYTES:]
        expected = hashlib.sha256(body).digest()[:CHECKSUM_BYTES]
        if digest != expected:
            raise BinaryFormatError(f"checksum mismatch: stored {digest.hex()}, computed {expected.hex()}; "
                                    f"the binary is corrupt or was modified", len(body))
        if cfg is not None and cfg.fingerprint != fingerprint:
            raise BinaryFormatError(f"binary was built for another hardware config (fingerprint "
                                    f"{fingerprint.hex()}); {cfg.name!r} has {cfg.fingerprint.hex()}", 8)
        if nsec != len(SECTION_NAMES):
            raise BinaryFormatError(f"section count {nsec}; a program has {len(SECTION_NAMES)} sections "
                                    f"({', '.join(SECTION_NAMES.values())})", 24)
        pos = HEADER.size + SECTION.size * nsec
        if pos > len(body):
            raise BinaryFormatError(f"section table of {nsec} entries ends at byte {pos}, past the end of "
                                    f"the {len(body)}-byte body", HEADER.size)
        payloads: dict[int, tuple[int, bytes]] = {}  # kind -> (offset, payload)
        for i, expected_kind in enumerate(SECTION_NAMES):
            at = HEADER.size + SECTION.size * i
            kind, res, off, length = SECTION.unpack_from(body, at)
            if kind != expected_kind:
                raise BinaryFormatError(f"section {i} has kind {kind}; section {i} must be kind "
                                        f"{expected_kind} ({SECTION_NAMES[expected_kind]})", at)
            if res or off != pos or off + length > len(body):
                raise BinaryFormatError(f"section {i} ({SECTION_NAMES[kind]}): bad placement offset={off} "
                                        f"length={length} reserved={res} (expected offset {pos}, reserved "
                                        f"0, body {len(body)} bytes)", at)
            payloads[kind] = (off, body[off:off + length])
            pos = off + length
        if pos != len(body):
            raise BinaryFormatError(f"{len(body) - pos} bytes after the last section", pos)
        config = _config_section(*payloads[SECTION_CONFIG], fingerprint)
        code_off, code_raw = payloads[SECTION_CODE]
        code = decode_code(code_raw, config, code_off)
        map_off, map_raw = payloads[SECTION_MEMMAP]
        meta_off, meta_raw = payloads[SECTION_META]
        memmap = _json_section(map_raw, SECTION_MEMMAP, map_off)
        meta = _json_section(meta_raw, SECTION_META, meta_off)
        try:
            memory_map = MemoryMap.from_list(memmap)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as err:
            # OverflowError: int(Infinity); RecursionError: str() of a deeply nested name
            raise BinaryFormatError(f"memory map section is malformed: {err}", map_off) from None
        _require_canonical(map_raw, canonical_json(memory_map.to_list()), SECTION_MEMMAP, map_off)
        if memory_map.extent > config.dram_bytes:
            raise BinaryFormatError(f"memory map needs {memory_map.extent} bytes of DRAM; config "
                                    f"{config.name!r} has {config.dram_bytes}", map_off)
        if not isinstance(meta, dict):
            raise BinaryFormatError(f"metadata section is a JSON {type(meta).__name__}, not an object",
                                    meta_off)
        try:
            program = cls(config, code, memory_map, meta)
        except (TypeError, ValueError, RecursionError) as err:  # JSON that cannot be re-serialised
            raise BinaryFormatError(f"metadata section is malformed: {err}", meta_off) from None
        _require_canonical(meta_raw, canonical_json(program.meta), SECTION_META, meta_off)
        return program


def _config_section(offset: int, raw: bytes, fingerprint: bytes) -> HardwareConfig:
    """The hardware config a binary carries, checked against the fingerprint its header records."""
    described = _json_section(raw, SECTION_CONFIG, offset)
    if isinstance(described, dict) and {"name", "energy"} <= described.keys():
        older = [f for f in LATER_CONFIG_FIELDS if f not in described]
        if older:
            raise BinaryFormatError(f"hardware config section predates the machine model's "
                                    f"{', '.join(older)} (a binary of an earlier energon-tvm): recompile the "
                                    f"model", offset)
    try:
        config = HardwareConfig.from_dict(described)
    except ConfigError as err:
        raise BinaryFormatError(f"hardware config section is invalid: {err}", offset) from None
    _require_canonical(raw, canonical_json(config.to_dict()), SECTION_CONFIG, offset)
    if config.fingerprint != fingerprint:
        raise BinaryFormatError(f"hardware config section describes config {config.name!r} with fingerprint "
                                f"{config.fingerprint.hex()}; the header (byte 8) records "
                                f"{fingerprint.hex()}", offset)
    return config


def _json_section(raw: bytes, kind: int, offset: int) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError besides JSONDecodeError: integers longer than Python's int/str digit limit
        raise BinaryFormatError(f"{SECTION_NAMES[kind]} section is not valid JSON: {err}", offset) from None


def _require_canonical(raw: bytes, canonical: bytes, kind: int, offset: int) -> None:
    if raw != canonical:
        at = next((i for i, (a, b) in enumerate(zip(raw, canonical)) if a != b), min(len(raw), len(canonical)))
        seen = raw[max(0, at - 8):at + 8]
        raise BinaryFormatError(f"{SECTION_NAMES[kind]} section is not canonical JSON (sorted keys, no "
                                f"spaces, integers as integers): {seen!r} where the encoder writes "
                                f"{canonical[max(0, at - 8):at + 8]!r}", offset + at)


__all__ = ["FORMAT_VERSION", "MAGIC", "EncodingError", "MemoryMap", "Program", "Region", "canonical_json"]
