"""Test data for the ISA tests: hypothesis strategies for random valid instructions and programs on
every built-in config (each field drawn from its ``bounds(cfg)``), the same with a plain seeded
``random.Random`` for the fuzzer, and a container writer (and config fingerprint) independent of
``isa/program.py`` to build binaries that are wrong in exactly one chosen way."""

from __future__ import annotations

import hashlib
import json
import random
import struct

from energon_tvm.isa.config import load_config
from energon_tvm.isa.instructions import OPS, Instruction
from energon_tvm.isa.program import DTYPE_BYTES, MemoryMap, Program, Region
from hypothesis import strategies as st

CONFIGS = {name: load_config(name) for name in ("edge", "server")}
BY_FINGERPRINT = {cfg.fingerprint: cfg for cfg in CONFIGS.values()}


def config_of(program: Program):
    """The built-in config with the program's fingerprint (the program's own may have another name)."""
    return BY_FINGERPRINT[program.config_fingerprint]


def builtin_of(program: Program):
    """The built-in config the program's machine is, under its own name, or None: a text naming that
    machine by ``.config NAME FINGERPRINT`` reassembles to the program without a ``cfg``."""
    builtin = BY_FINGERPRINT.get(program.config_fingerprint)
    if builtin is None or builtin.replace(name=program.config_name) != program.config:
        return None
    return builtin


# -- hypothesis --------------------------------------------------------------------------------------

def instructions(cfg) -> st.SearchStrategy[Instruction]:
    """Any valid instruction for ``cfg``."""
    return st.sampled_from(OPS).flatmap(
        lambda op: st.tuples(*(st.integers(*f.bounds(cfg)) for f in op.fields)).map(
            lambda args: Instruction(op, args)))


# names, layouts and labels with everything the text format must quote: spaces, ; # = " \ newlines
_names = st.text(max_size=8) | st.sampled_from(["q", "k_planes", "out.0", "a b", "x=1", ";", '"', ""])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def memory_maps(draw, cfg) -> MemoryMap:
    specs = draw(st.lists(st.tuples(st.integers(0, 1 << 20), st.sampled_from(sorted(DTYPE_BYTES)),
                                    st.lists(st.integers(1, 64), max_size=4), _names),
                          max_size=4))
    names = draw(st.lists(_names, min_size=len(specs), max_size=len(specs), unique=True))
    regions, offset = [], 0
    for (gap, dtype, shape, layout), name in zip(specs, names):
        region = Region(name, offset + gap, dtype, tuple(shape), layout)
        regions.append(region)
        offset = region.end
    return MemoryMap(tuple(draw(st.permutations(regions))))


@st.composite
def programs(draw, cfg=None) -> Program:
    """Any valid program, on a random built-in config unless ``cfg`` is given."""
    cfg = cfg or draw(st.sampled_from(list(CONFIGS.values())))
    code = draw(st.lists(instructions(cfg), max_size=24))
    # "config" is not metadata: the program's config is Program.config
    meta = draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k != "config"), json_values, max_size=4))
    if code and draw(st.booleans()):
        meta["labels"] = draw(st.lists(_names | json_values, min_size=len(code), max_size=len(code)))
    # the name is only a label of the config; the fingerprint identifies it
    name = draw(st.just(cfg.name) | _names)
    return Program(cfg.replace(name=name), tuple(code), draw(memory_maps(cfg)), meta)


# -- plain random, for the fuzzer ----------------------------------------------------------------------

def random_instruction(rng: random.Random, cfg) -> Instruction:
    op = rng.choice(OPS)
    args = []
    for f in op.fields:
        lo, hi = f.bounds(cfg)
        args.append(rng.choice([lo, hi, rng.randint(lo, hi)]))
    return Instruction(op, tuple(args))


def random_program(rng: random.Random, cfg) -> Program:
    code = [random_instruction(rng, cfg) for _ in range(rng.randint(0, 20))]
    regions, offset = [], 0
    for i in range(rng.randint(0, 4)):
        region = Region(rng.choice([f"r{i}", f"r {i};#", f"\u00e9{i}"]), offset + rng.randint(0, 4096),
                        rng.choice(sorted(DTYPE_BYTES)), tuple(rng.randint(1, 16) for _ in range(rng.randint(0, 4))),
                        rng.choice(["BHSD", "", "planes"]))
        regions.append(region)
        offset = region.end
    meta = {"workload": {"seq_q": rng.randint(1, 512), "alpha": [rng.uniform(-1, 1)]}}
    if code and rng.random() < 0.7:
        meta["labels"] = [rng.choice(["hdr", f"b0 h0 q{i}:{i + 64}", "x\ny", ""]) for i in range(len(code))]
    return Program.build(cfg, code, MemoryMap(tuple(regions)), meta)


# -- an independent container writer ------------------------------------------------------------------

HEADER = struct.Struct("<4sHH16sHHI")
SECTION = struct.Struct("<HHII")


def container(sections: list[tuple[int, bytes]], fingerprint: bytes, *, magic: bytes = b"ENGN",
              fmt: int = 2, isa: int = 3) -> bytes:
    """A binary with the given (kind, payload) sections, correct length and checksum (the layout is
    written out here from the format description, not borrowed from ``isa/program.py``)."""
    pos = HEADER.size + SECTION.size * len(sections)
    table = b""
    for kind, payload in sections:
        table += SECTION.pack(kind, 0, pos, len(payload))
        pos += len(payload)
    body = HEADER.pack(magic, fmt, isa, fingerprint, len(sections), 0, pos + 8) + table
    return reseal(body + b"".join(p for _, p in sections) + bytes(8))


def fingerprint_of(config: dict) -> bytes:
    """The fingerprint of a config given as the dict ``HardwareConfig.to_dict`` writes, computed from
    the definition (the first 16 bytes of SHA-256 over its sorted, compact JSON, both names left out)
    for any dict of that shape, valid or not: a binary can carry a broken config with a matching
    fingerprint."""
    d = json.loads(json.dumps(config))
    d.pop("name", None)
    if isinstance(d.get("energy"), dict):
        d["energy"].pop("name", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).digest()[:16]


def reseal(blob: bytes) -> bytes:
    """``blob`` with its total length (bytes 28..32) and checksum (last 8 bytes) made consistent, so
    that validation gets past them."""
    blob = bytearray(blob)
    if len(blob) >= 40:
        blob[28:32] = len(blob).to_bytes(4, "little")
        blob[-8:] = hashlib.sha256(bytes(blob[:-8])).digest()[:8]
    return bytes(blob)


def sections_of(blob: bytes) -> list[tuple[int, bytes]]:
    """The (kind, payload) sections of a well-formed binary."""
    n = struct.unpack_from("<H", blob, 24)[0]
    out = []
    for i in range(n):
        kind, _res, off, length = SECTION.unpack_from(blob, HEADER.size + SECTION.size * i)
        out.append((kind, blob[off:off + length]))
    return out
