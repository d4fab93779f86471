"""Programs and their binary container.

A :class:`Program` is a sequence of instructions, a :class:`MemoryMap` (which DRAM region holds which
tensor, in which layout) and metadata (the workload, MP-MRF parameters and schedule it was built
for, and per-instruction labels). Its binary form::

    offset  size  field
    0       4     magic b"ENGN"
    4       2     container format version (u16, little-endian)
    6       2     ISA version (u16)
    8       16    hardware-config fingerprint
    24      2     section count n (u16)
    26      2     reserved, zero
    28      4     total length in bytes, checksum included (u32)
    32      12*n  section table: kind (u16), reserved (u16), offset (u32), length (u32)
    ...           section payloads, in table order, back to back
    end-8   8     checksum: the first 8 bytes of SHA-256 over everything before it

Sections: 1 = code (256-bit words), 2 = memory map (canonical JSON), 3 = metadata (canonical JSON);
each exactly once, in this order. Loading validates every part, accepts only this canonical form (so
every valid binary is exactly what :meth:`Program.to_bytes` writes for the program it decodes to) and
raises :class:`BinaryFormatError` with the byte offset of the first problem.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .config import CONFIG_DIR, HardwareConfig, load_config
from .encoding import decode_code, encode_code
from .errors import BinaryFormatError, ConfigError, EncodingError
from .instructions import ISA_VERSION, Instruction

MAGIC = b"ENGN"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sHH16sHHI")
SECTION = struct.Struct("<HHII")
CHECKSUM_BYTES = 8
SECTION_CODE, SECTION_MEMMAP, SECTION_META = 1, 2, 3
SECTION_NAMES = {SECTION_CODE: "code", SECTION_MEMMAP: "memory map", SECTION_META: "metadata"}
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

    def region_at(self, addr: int) -> Region | None:
        for r in self.regions:
            if r.offset <= addr < r.end:
                return r
        return None

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
    """Instructions + memory map + metadata, for one hardware config (by fingerprint)."""

    config_name: str
    config_fingerprint: bytes
    code: tuple[Instruction, ...]
    memory_map: MemoryMap
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "code", tuple(self.code))
        # metadata is JSON by contract: normalise now so a round trip compares equal
        meta = dict(self.meta)
        meta["config"] = self.config_name
        object.__setattr__(self, "meta", json.loads(canonical_json(meta)))

    @classmethod
    def build(cls, cfg: HardwareConfig, code, memory_map: MemoryMap, meta: dict | None = None) -> Program:
        return cls(cfg.name, cfg.fingerprint, tuple(code), memory_map, dict(meta or {}))

    @property
    def labels(self) -> list[str]:
        """Per-instruction labels (the tile each works on), as the scheduler recorded them."""
        labels = self.meta.get("labels")
        return list(labels) if isinstance(labels, list) and len(labels) == len(self.code) else []

    def to_bytes(self, cfg: HardwareConfig) -> bytes:
        if cfg.fingerprint != self.config_fingerprint:
            raise ConfigError(f"program was built for config {self.config_name!r}; cannot encode it for "
                              f"{cfg.name!r} (fingerprints differ)")
        sections = [(SECTION_CODE, encode_code(self.code, cfg)),
                    (SECTION_MEMMAP, canonical_json(self.memory_map.to_list())),
                    (SECTION_META, canonical_json(self.meta))]
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
        """Validate and decode a binary. Without ``cfg`` the built-in config whose fingerprint the
        binary records is used.

        Only the canonical form is accepted (the bytes :meth:`to_bytes` writes for the decoded
        program): sections in the order code, memory map, metadata, and canonical JSON. So a binary
        and its program determine each other, which the assembler's round trip relies on."""
        blob = bytes(blob)
        if len(blob) < HEADER.size + CHECKSUM_BYTES:
            raise BinaryFormatError(f"truncated: {len(blob)} bytes, a program has at least "
                                    f"{HEADER.size + CHECKSUM_BYTES}", len(blob))
        magic, fmt, isa, fingerprint, nsec, reserved, total = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise BinaryFormatError(f"bad magic {magic!r}, expected {MAGIC!r}: not an Energon program", 0)
        if fmt != FORMAT_VERSION:
            raise BinaryFormatError(f"container format version {fmt} is not supported (this build reads "
                                    f"version {FORMAT_VERSION})", 4)
        if isa != ISA_VERSION:
            raise BinaryFormatError(f"ISA version {isa} is not supported (this build implements ISA "
                                    f"version {ISA_VERSION})", 6)
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
        cfg = _config_for(fingerprint) if cfg is None else cfg
        if cfg.fingerprint != fingerprint:
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
        code_off, code_raw = payloads[SECTION_CODE]
        code = decode_code(code_raw, cfg, code_off)
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
        if memory_map.extent > cfg.dram_bytes:
            raise BinaryFormatError(f"memory map needs {memory_map.extent} bytes of DRAM; config "
                                    f"{cfg.name!r} has {cfg.dram_bytes}", map_off)
        if not isinstance(meta, dict):
            raise BinaryFormatError(f"metadata section is a JSON {type(meta).__name__}, not an object",
                                    meta_off)
        if not isinstance(meta.get("config"), str):
            raise BinaryFormatError(f"metadata \"config\" entry is {meta.get('config')!r}; it must be the "
                                    f"config name, a string", meta_off)
        try:
            program = cls(meta["config"], fingerprint, code, memory_map, meta)
        except (TypeError, ValueError, RecursionError) as err:  # JSON that cannot be re-serialised
            raise BinaryFormatError(f"metadata section is malformed: {err}", meta_off) from None
        _require_canonical(meta_raw, canonical_json(program.meta), SECTION_META, meta_off)
        return program


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


def _config_for(fingerprint: bytes) -> HardwareConfig:
    for path in sorted(CONFIG_DIR.glob("*.toml")):
        if path.stem.startswith("energy"):
            continue
        cfg = load_config(path)
        if cfg.fingerprint == fingerprint:
            return cfg
    raise BinaryFormatError(f"binary was built for a hardware config that is not built in (fingerprint "
                            f"{fingerprint.hex()}); pass that config explicitly", 8)


__all__ = ["FORMAT_VERSION", "MAGIC", "EncodingError", "MemoryMap", "Program", "Region", "canonical_json"]
