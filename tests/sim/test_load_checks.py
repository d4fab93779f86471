"""Meaning checks at load (schedules.check_program) and their callers: the executor's Runner and
``tvmc inspect``. A program is what the emitter writes for the workload and schedule its metadata
names, or it is refused with one line naming the field, the value seen and what it must be."""

import json
import tracemalloc
from dataclasses import replace

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import BinaryFormatError
from energon_tvm.isa.instructions import Reg, make
from energon_tvm.isa.program import MemoryMap, Program
from energon_tvm.schedules import AttentionWorkload, Schedule, check_program, emit_program

from energon_tvm.executor import Runner
from energon_tvm.tvmc.inspect import describe_program, upper_bound_profile

CFG = load_config("edge")
W = AttentionWorkload(1, 2, 16, 24, 16, bias_shape=(1, 1, 1, 24))
PROGRAM = emit_program(W, Schedule(8, 8, 2, 2, 2), CFG)
PLAIN = emit_program(replace(W, bias_shape=None), Schedule(8, 8, 2, 2, 2), CFG)


def edited(meta=None, code=None, memory_map=None, base=PROGRAM) -> Program:
    m = json.loads(json.dumps(base.meta))
    for path, value in (meta or {}).items():
        *parents, key = path.split(".")
        target = m
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return Program(CFG, base.code if code is None else tuple(code),
                   base.memory_map if memory_map is None else memory_map, m)


def refused(program: Program, text: str) -> str:
    with pytest.raises(BinaryFormatError) as err:
        check_program(program)
    msg = str(err.value)
    assert text in msg and "\n" not in msg and len(msg) < 600, msg
    return msg


def test_emitted_programs_pass_and_name_their_workload():
    assert check_program(PROGRAM) == W
    assert check_program(Program.from_bytes(PROGRAM.to_bytes())) == W


@pytest.mark.parametrize("meta, text", [
    ({"workload": KeyError}, "metadata has no 'workload' record"),
    ({"workload": "x"}, 'metadata workload = "x" must be an object'),
    ({"workload.seq_k": "many"}, "metadata workload record is invalid"),
    ({"workload.params.rounds": [[4, 2]]}, "metadata workload record is invalid"),
    ({"workload.heads": 0}, "workload heads = 0 must be a positive integer"),
    # parses (int(1.5) is 1, bool(1) is True) but is not what the emitter writes
    ({"workload.batch": 1.5}, "metadata.workload.batch = 1.5; a program for workload attn_b1_h2_q16_k24"),
    ({"workload.causal": 0}, "metadata.workload.causal = 0; a program for workload"),
    ({"workload.seq_k": 40_000_000}, "bias shape [1, 1, 1, 24] does not broadcast to [B, H, Sq, Sk] = [1, 2, 16, 4000"),
    ({"workload.head_dim": 256}, "head dim 256 is wider than the edge datapath"),
    ({"schedule": KeyError}, "metadata has no 'schedule' record"),
    ({"schedule.kv_slots": 1000}, 'metadata schedule {"filter_mode": "store", "k_chunk": 8, "kv_slots": 1000'),
    ({"schedule.plane_mode": "disk"}, "schedule plane_mode = 'disk'"),
    ({"schedule.tile_slots": KeyError}, "metadata.schedule.tile_slots is missing; a program for workload"),
    ({"scale": "0.25"}, 'metadata.scale = "0.25"; a program for workload'),
    ({"scale": 0.5}, "metadata.scale = 0.5; a program for workload"),
    ({"heads": True}, "metadata.heads = true; a program for workload"),
    ({"heads": 3}, "metadata.heads = 3;"),
    ({"x": 1}, "metadata.x = 1 is not part of an attention program's metadata"),
    ({"labels": KeyError}, "metadata labels = null; must be a list of"),
    ({"labels": ["a"]}, "metadata labels = a list of 1; must be a list of"),
    ({"labels.3": 7}, "metadata labels[3] = 7; labels must be strings"),
])
def test_metadata_that_is_not_the_emitters_is_refused(meta, text):
    if "labels.3" in meta:  # an element of a list, not a key
        labels = list(PROGRAM.meta["labels"])
        labels[3] = meta.pop("labels.3")
        meta["labels"] = labels
    refused(edited(meta), text)


def test_a_memory_map_that_is_not_the_workloads_is_refused():
    regions = list(PROGRAM.memory_map.regions)
    q = regions[1]
    refused(edited(memory_map=MemoryMap(tuple(regions[:1] + regions[2:]))), 'memory map regions are ["param","kplanes"')
    refused(edited(memory_map=MemoryMap(tuple([regions[0], replace(q, offset=q.offset - 2)] + regions[2:]))),
            f"memory map region 'q' has offset = {q.offset - 2}; a program for workload")
    refused(edited(memory_map=MemoryMap(tuple([regions[0], replace(q, dtype="uint8")] + regions[2:]))),
            'memory map region \'q\' has dtype = "uint8"')


def test_a_header_that_is_not_the_workloads_is_refused():
    code = list(PROGRAM.code)
    code[2] = make("SETR", reg=Reg.SEQ_K, value=23)
    refused(edited(code=code), "instruction 2 is SETR {'reg': 2, 'value': 23}; a program for workload")


def test_the_runner_checks_what_it_runs():
    runner = Runner()
    program, workload = runner.program(PROGRAM.to_bytes())
    assert workload == W
    with pytest.raises(BinaryFormatError, match="metadata.heads = 5"):
        runner.program(edited({"heads": 5}).to_bytes())


def test_inspect_refuses_a_huge_claim_before_allocating_anything():
    """A small binary whose metadata says seq_k = 40,000,000 used to make inspect allocate the upper-bound
    masks from it (heads x Sq x Sk bools, 4 GB here)."""
    blob = edited({"workload.seq_k": 40_000_000}, base=PLAIN).to_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(BinaryFormatError, match="exceed 65535"):
            describe_program(blob)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    assert "estimated cycles: at most" in describe_program(PROGRAM.to_bytes(), code=False)


@pytest.mark.parametrize("w", [AttentionWorkload(1, 2, 5, 9, 8, causal=True),
                               AttentionWorkload(2, 1, 9, 5, 8, causal=True), AttentionWorkload(1, 3, 7, 7, 8)])
def test_upper_bound_profile_is_a_view_of_the_dense_masks(w):
    dense = np.ones((w.batch * w.heads, w.seq_q, w.seq_k), bool)
    if w.causal:
        dense &= w.causal_keep()[None]
    profile = upper_bound_profile(w)
    assert profile.rounds == len(w.params.rounds)
    assert all(np.array_equal(m, dense) for m in profile.masks)


def test_upper_bound_profile_of_the_largest_workload_allocates_almost_nothing():
    w = AttentionWorkload(1, CFG.max_heads, 65535, 65535, 8, causal=True)  # ~275 GB as bools
    tracemalloc.start()
    try:
        profile = upper_bound_profile(w)
        assert tracemalloc.get_traced_memory()[1] < 4 << 20  # Sq + Sk flags and their arange
    finally:
        tracemalloc.stop()
    q0, k0 = 65000, 64992
    np.testing.assert_array_equal(profile.bits(0, CFG.max_heads - 1, q0, 4, k0, 16),
                                  np.arange(k0, k0 + 16)[None, :] <= np.arange(q0, q0 + 4)[:, None])
