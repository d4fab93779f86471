"""Structure-aware mutations of real program binaries, and what loading and running each one does.

Shared by tests/sim/test_fuzz_sim.py (a few thousand cases) and bench/fuzz_programs.py (100,000). The
corpus is emitted programs for small workloads that cover the emitter's modes (bias row / tile,
causal, streamed planes, recomputed scores, dense, two configs). A mutation edits one thing a program
is made of and writes a consistent binary again (checksum recomputed), so that the meaning checks and
the simulator see it:

* ``field``: one instruction field (header registers included) set to a value near its own, a bound
  or a random legal value; ``fields``: two to four of those;
* ``reorder``: an instruction swapped, moved, duplicated or deleted (its label with it);
* ``foreign``: an instruction replaced by a random legal one;
* ``workload``: the metadata's workload or schedule changed *consistently* (memory map, header and
  metadata rewritten as the emitter would for the new one), so the old code runs against a new layout;
* ``meta`` / ``memory map``: one metadata value or region field changed on its own;
* ``bytes``: bits flipped or bytes set in the code section.

:func:`run_case` loads a binary (``Program.from_bytes``, then ``check_program``) and runs an accepted
one on the simulator with finite inputs, with NumPy's floating-point warnings raised as errors. The
outcome is ``refused`` or ``trapped`` (a project error: fine), ``finite`` (ran, finite output: fine),
``escape`` (any other exception: a bug) or ``nonfinite`` (ran to a NaN or infinite output: a bug).
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from dataclasses import replace

import numpy as np
from energon_tvm.isa.config import load_config
from energon_tvm.isa.encoding import encode
from energon_tvm.isa.errors import EnergonError, ScheduleError
from energon_tvm.isa.instructions import OPS, WORD_BYTES, Instruction
from energon_tvm.isa.numerics import FilterRound, MPMRFParams
from energon_tvm.isa.program import CHECKSUM_BYTES, HEADER, SECTION, MemoryMap, Program
from energon_tvm.runtime_sim import Simulator, run_attention
from energon_tvm.schedules import AttentionWorkload, Schedule, check_program, emit_program, plan_memory
from energon_tvm.schedules.emit import program_header, program_meta

HEADER_LEN = 5  # SETR words every emitted program starts with

EDGE, SERVER = load_config("edge"), load_config("server")
#: (config, workload, schedule or None for the heuristic)
CORPUS = [
    (EDGE, AttentionWorkload(1, 2, 16, 24, 16), None),
    (EDGE, AttentionWorkload(1, 2, 12, 20, 16, bias_shape=(1, 1, 1, 20)), None),
    (EDGE, AttentionWorkload(1, 1, 10, 16, 16, causal=True, bias_shape=(1, 1, 10, 16)), Schedule(4, 8, 2, 2, 2)),
    (EDGE, AttentionWorkload(1, 2, 16, 24, 16, causal=True), Schedule(8, 8, 2, 2, 2, "chunk", "recompute")),
    (EDGE, AttentionWorkload(1, 2, 16, 16, 16, params=MPMRFParams(())), Schedule(8, 8, 2, 2, 1)),
    (EDGE, AttentionWorkload(2, 1, 8, 16, 32, scale=0.3), Schedule(4, 8, 1, 1, 1, "head", "store")),
    (SERVER, AttentionWorkload(1, 2, 16, 24, 16, bias_shape=(1, 2, 16, 24)), Schedule(8, 16, 2, 2, 2, "chunk")),
]


def corpus() -> list[bytes]:
    from energon_tvm.schedules import default_schedule

    return [emit_program(w, s or default_schedule(w, cfg), cfg).to_bytes() for cfg, w, s in CORPUS]


# -- mutations ------------------------------------------------------------------------------------------

def _rebuild(p: Program, code=None, memory_map=None, meta=None) -> bytes:
    return Program(p.config, tuple(p.code if code is None else code), p.memory_map if memory_map is None
                   else memory_map, p.meta if meta is None else meta).to_bytes()


def _reseal(blob: bytearray) -> bytes:
    body = bytes(blob[:-CHECKSUM_BYTES])
    return body + hashlib.sha256(body).digest()[:CHECKSUM_BYTES]


def _patched(p: Program, blob: bytes, code: list[Instruction]) -> bytes:
    """What ``to_bytes`` writes for ``p`` with ``code`` (as long as its own), re-encoding only the words
    that changed: the mutator's cost stays below the loader's."""
    out = bytearray(blob)
    offset = SECTION.unpack_from(blob, HEADER.size)[2]
    for pc, (old, new) in enumerate(zip(p.code, code)):
        if old is not new:
            out[offset + pc * WORD_BYTES:offset + (pc + 1) * WORD_BYTES] = encode(new, p.config)
    return _reseal(out)


def _near(rng: random.Random, value: int, lo: int, hi: int, scale: int) -> int:
    choice = rng.random()
    if choice < 0.15:
        new = rng.choice([lo, hi])
    elif choice < 0.25:
        new = rng.randint(lo, hi)
    elif choice < 0.4:
        new = value + rng.choice([-1, 1])
    elif choice < 0.75:
        new = value + rng.choice([-1, 1]) * rng.choice([2, 4, 8, 16, 64, 256])
    elif choice < 0.9:
        new = value + rng.choice([-1, 1]) * scale  # a region's or a tile's worth away
    else:
        new = rng.choice([value * 2, value // 2, value + (1 << rng.randrange(20))])
    return min(hi, max(lo, new))


def _mutate_field(rng, p: Program, code: list[Instruction]) -> None:
    pc = rng.randrange(len(code) - 1)
    ins = code[pc]
    if not ins.args:
        return
    i = rng.randrange(len(ins.args))
    f = ins.op.fields[i]
    lo, hi = f.bounds(p.config)
    scale = rng.choice([r.nbytes for r in p.memory_map.regions] + [64, 512, 4096])
    args = list(ins.args)
    args[i] = _near(rng, args[i], lo, hi, scale)
    code[pc] = Instruction(ins.op, tuple(args))


def field(rng, p: Program, blob: bytes) -> bytes:
    code = list(p.code)
    _mutate_field(rng, p, code)
    return _patched(p, blob, code)


def fields(rng, p: Program, blob: bytes) -> bytes:
    code = list(p.code)
    for _ in range(rng.randint(2, 4)):
        _mutate_field(rng, p, code)
    return _patched(p, blob, code)


def reorder(rng, p: Program, blob: bytes) -> bytes:
    code, labels = list(p.code), list(p.meta["labels"])
    n = len(code) - 1  # HALT stays last unless deleted or moved on purpose below
    i, j = rng.randrange(n), rng.randrange(n)
    choice = rng.random()
    if choice < 0.35:
        code[i], code[j] = code[j], code[i]
        labels[i], labels[j] = labels[j], labels[i]
    elif choice < 0.6:
        code.insert(j, code.pop(i))
        labels.insert(j, labels.pop(i))
    elif choice < 0.8:
        code.insert(j, code[i])
        labels.insert(j, labels[i])
    else:
        i = rng.randrange(len(code))
        del code[i], labels[i]
    return _rebuild(p, code, meta={**p.meta, "labels": labels})


def foreign(rng, p: Program, blob: bytes) -> bytes:
    code = list(p.code)
    op = rng.choice(OPS)
    args = []
    for f in op.fields:
        lo, hi = f.bounds(p.config)
        args.append(rng.choice([lo, hi, rng.randint(lo, hi), rng.randint(lo, min(hi, lo + 64))]))
    code[rng.randrange(len(code))] = Instruction(op, tuple(args))
    return _patched(p, blob, code)


def _new_workload(rng, w: AttentionWorkload) -> AttentionWorkload:
    """A workload near ``w``: a dimension, the mask, the scale or the filter rounds changed."""
    change = rng.choice(["seq_q", "seq_k", "heads", "batch", "head_dim", "causal", "bias", "scale", "params"])
    if change in ("seq_q", "seq_k", "heads", "batch", "head_dim"):
        step = 8 if change in ("head_dim", "seq_k") and rng.random() < 0.7 else 1
        value = max(1, getattr(w, change) + rng.choice([-2, -1, 1, 2]) * step)
        new = replace(w, **{change: value}, bias_shape=None)
        if w.bias_shape is not None:  # the same kind of mask, resized
            b, h, sq, _ = w.bias_shape4
            new = replace(new, bias_shape=(1, new.heads if h > 1 else 1, new.seq_q if sq > 1 else 1, new.seq_k))
        return new
    if change == "causal":
        return replace(w, causal=not w.causal)
    if change == "bias":
        return replace(w, bias_shape=rng.choice([None, (1, 1, 1, w.seq_k), (w.batch, w.heads, w.seq_q, w.seq_k)]))
    if change == "scale":
        return replace(w, scale=rng.choice([None, 0.01, 0.5, 3.0, 1e-6]))
    rounds = [FilterRound(rng.randint(1, 4), rng.randint(1, 4), rng.uniform(-1, 1))]
    if rng.random() < 0.5:
        rounds.append(FilterRound(rounds[0].q_bits + rng.randint(0, 4), rounds[0].k_bits + rng.randint(0, 4),
                                  rng.uniform(-1, 1)))
    return replace(w, params=MPMRFParams(tuple(rounds) if rng.random() < 0.9 else ()))


def workload(rng, p: Program, blob: bytes) -> bytes:
    """The program's claim changed as a whole: the emitter's memory map, header and metadata for a
    nearby workload (or another schedule), over the old code."""
    w, s = AttentionWorkload.from_dict(p.meta["workload"]), Schedule.from_dict(p.meta["schedule"])
    if rng.random() < 0.25:
        knob = rng.choice(["q_tile", "k_chunk", "tile_slots", "kv_slots", "out_slots"])
        step = 8 if knob == "k_chunk" else 1
        s = replace(s, **{knob: max(step, getattr(s, knob) + rng.choice([-1, 1]) * step)})
    else:
        try:
            w = _new_workload(rng, w)
        except ScheduleError:
            return field(rng, p, blob)
    try:
        mm = plan_memory(w)
    except ValueError:  # no layout at all (head_dim < 8): the emitter could not have written it
        return field(rng, p, blob)
    code = program_header(w, mm) + list(p.code[HEADER_LEN:])
    return _rebuild(p, code, mm, {**program_meta(w, s), "labels": p.meta["labels"]})


META_VALUES = [None, 0, -1, 1, 2, 1.5, 1e-300, 40_000_000, "x", "1", True, [], {}, [1, 2]]


def meta(rng, p: Program, blob: bytes) -> bytes:
    m = json.loads(json.dumps(p.meta))
    target = rng.choice(["workload", "schedule", "top", "labels", "params"])
    if target == "labels":
        labels = m["labels"]
        if rng.random() < 0.5:
            labels[rng.randrange(len(labels))] = rng.choice(META_VALUES)
        else:
            m["labels"] = labels[:rng.randrange(len(labels))]
    elif target == "params":
        m["workload"]["params"] = rng.choice([{"rounds": [[4, 2, 0.0]]}, {"rounds": [[4, 2]]}, {"rounds": "x"},
                                              {"rounds": [[2, 4, 0.0], [1, 1, 0.0]]}, {}, [], {"rounds": [[4, 2, 9]]}])
    else:
        record = m if target == "top" else m[target]
        key = rng.choice(sorted(record) + ["extra"])
        if rng.random() < 0.1:
            record.pop(key, None)
        else:
            record[key] = rng.choice(META_VALUES)
    return _rebuild(p, meta=m)


def memory_map(rng, p: Program, blob: bytes) -> bytes:
    regions = list(p.memory_map.regions)
    i = rng.randrange(len(regions))
    r = regions[i]
    choice = rng.random()
    try:
        if choice < 0.4:
            regions[i] = replace(r, offset=max(0, r.offset + rng.choice([-64, -8, -1, 1, 8, 64, 4096])))
        elif choice < 0.6:
            shape = list(r.shape)
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1])
            regions[i] = replace(r, shape=tuple(shape))
        elif choice < 0.75:
            regions[i] = replace(r, dtype=rng.choice(["int16", "uint8", "float32", "float64"]))
        elif choice < 0.85:
            regions[i] = replace(r, name=rng.choice(["q", "k", "v", "x", "out"]))
        else:
            del regions[i]
        return _rebuild(p, memory_map=MemoryMap(tuple(regions)))
    except ValueError:  # overlapping or duplicate regions: not a map a program can carry
        return field(rng, p, blob)


def code_bytes(rng, p: Program, blob: bytes) -> bytes:
    blob = bytearray(blob)
    _kind, _res, offset, length = SECTION.unpack_from(blob, HEADER.size)
    for _ in range(rng.randint(1, 3)):
        at = offset + rng.randrange(length)
        if rng.random() < 0.7:
            blob[at] ^= 1 << rng.randrange(8)
        else:
            blob[at] = rng.choice([0, 0xFF, rng.randrange(256)])
    return _reseal(blob)


#: mutation -> weight
MUTATIONS = {field: 30, fields: 10, reorder: 10, foreign: 6, workload: 14, meta: 10, memory_map: 5, code_bytes: 15}


class Mutator:
    """Draws mutations of the corpus; the same seed gives the same mutants."""

    def __init__(self, blobs: list[bytes], seed: int = 0):
        self.rng = random.Random(seed)
        self.programs = [(Program.from_bytes(b), b) for b in blobs]
        self.ops, self.weights = list(MUTATIONS), list(MUTATIONS.values())

    def __call__(self) -> tuple[str, bytes]:
        rng = self.rng
        p, original = rng.choice(self.programs)
        for _ in range(8):  # a mutation that changed nothing is drawn again
            op = rng.choices(self.ops, self.weights)[0]
            blob = op(rng, p, original)
            if blob != original:
                return op.__name__, blob
        return op.__name__, blob


# -- running a case -------------------------------------------------------------------------------------

class Inputs:
    """Finite inputs for each workload a case names: Q/K/V normal, a bias with masked (-1e9) entries."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.cache: dict = {}

    def __call__(self, w: AttentionWorkload):
        key = w.key()
        if key not in self.cache:
            if len(self.cache) > 256:
                self.cache.clear()
            rng = np.random.default_rng(self.seed)
            q = rng.standard_normal((w.batch, w.heads, w.seq_q, w.head_dim)).astype(np.float32)
            k = rng.standard_normal((w.batch, w.heads, w.seq_k, w.head_dim)).astype(np.float32)
            v = rng.standard_normal((w.batch, w.heads, w.seq_k, w.head_dim)).astype(np.float32)
            bias = None
            if w.bias_shape is not None:
                bias = np.where(rng.random(w.bias_shape) < 0.2, -1e9, rng.standard_normal(w.bias_shape))
                bias = bias.astype(np.float32)
            self.cache[key] = (q, k, v, bias)
        return self.cache[key]


def run_case(blob: bytes, inputs: Inputs) -> tuple[str, str, str]:
    """(outcome, kind, message) of loading ``blob`` and, if it is accepted, running it."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a NaN cast warning is not a trap
        stage = "load"
        try:
            try:
                program = Program.from_bytes(blob)
            except EnergonError as err:
                return "refused", f"{type(err).__name__} (container)", str(err)
            try:
                w = check_program(program)
            except EnergonError as err:
                return "refused", f"{type(err).__name__} (meaning)", str(err)
            stage = "simulation"
            q, k, v, bias = inputs(w)
            try:
                out, _ = run_attention(program, program.config, q, k, v, bias, simulator=Simulator(program.config))
            except EnergonError as err:
                return "trapped", type(err).__name__, str(err)
        except Exception as err:  # noqa: BLE001 - anything else is what the fuzzer looks for
            return "escape", f"{type(err).__name__} in {stage}", f"{type(err).__name__}: {str(err)[:300]}"
    if not np.isfinite(out).all():
        return "nonfinite", "non-finite output", f"{int((~np.isfinite(out)).sum())} non-finite output values"
    return "finite", "finite output", ""
