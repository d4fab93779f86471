"""The executor contract (``compile_call`` / ``Runner.run_call``) and the runtime bridge, without
building a model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from energon_tvm.isa.config import load_config
from energon_tvm.isa.errors import BinaryFormatError, ScheduleError
from energon_tvm.isa.numerics import MPMRFParams
from energon_tvm.isa.program import Program
from energon_tvm.schedules.workload import AttentionWorkload

from energon_tvm.executor import EnergonTarget, Runner
from energon_tvm.executor import compile_call as compile_program
from energon_tvm.mpmrf import mpmrf_attention


def compile_call(workload, config) -> bytes:
    return compile_program(workload, EnergonTarget(config)).blob


def run_call(blob, q, k, v, bias, backend="simulator"):
    return Runner(backend=backend).run_call(blob, q, k, v, bias)


def _operands(b=1, h=2, sq=4, sk=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((b, h, sq, d)).astype(np.float32),
            rng.standard_normal((b, h, sk, d)).astype(np.float32),
            rng.standard_normal((b, h, sk, d)).astype(np.float32))


def test_blob_is_an_energon_program_for_the_workload():
    w = AttentionWorkload(1, 2, 4, 6, 8, causal=True, scale=0.3)
    blob = compile_call(w, load_config("edge"))
    prog = Program.from_bytes(blob)
    assert prog.config_name == "edge"
    assert AttentionWorkload.from_dict(prog.meta["workload"]) == w
    assert compile_call(w, load_config("edge")) == blob  # deterministic


def test_run_call_with_bias_equals_the_reference():
    q, k, v = _operands()
    bias = np.zeros((1, 1, 1, 6), np.float32)
    bias[..., -1] = -1e9
    w = AttentionWorkload(1, 2, 4, 6, 8, bias_shape=(1, 1, 1, 6), scale=0.3)
    blob = compile_call(w, load_config("edge"))
    out, stats = run_call(blob, q, k, v, bias)
    expected = mpmrf_attention(q, k, v, bias, w.params, 0.3)
    np.testing.assert_allclose(out, expected.output, rtol=1e-5, atol=1e-7)
    assert stats["kept_ratio"] == expected.kept_ratios()
    assert stats["executor"] == "simulator" and stats["cycles"] > 0
    ref_out, ref_stats = run_call(blob, q, k, v, bias, backend="reference")
    np.testing.assert_array_equal(ref_out, expected.output)
    assert ref_stats["kept"] == stats["kept"] and ref_stats["executor"] == "reference"
    assert stats["candidates"] == 1 * 2 * 4 * 5 and stats["pairs"] == 1 * 2 * 4 * 6
    assert stats["final_kept_ratio"] == pytest.approx(stats["kept"] / stats["candidates"])


def test_run_call_causal_is_bottom_right_aligned():
    q, k, v = _operands(sq=4, sk=6)
    w = AttentionWorkload(1, 2, 4, 6, 8, causal=True, params=MPMRFParams.dense(2))
    out, stats = run_call(compile_call(w, load_config("edge")), q, k, v, None)
    mask = np.where(np.arange(6)[None, :] > np.arange(4)[:, None] + 2, -np.inf, 0.0)
    np.testing.assert_allclose(out, mpmrf_attention(q, k, v, mask, w.params).output, rtol=1e-5, atol=1e-7)
    assert stats["candidates"] == 2 * (3 + 4 + 5 + 6)


@pytest.mark.parametrize("blob, message", [
    ("text", "must be bytes, got str"),
    (b"\xff\xfe", "truncated"),
    (b"ENGX" + bytes(60), "bad magic"),
    (b"ENGN" + bytes(60), "container format version 0"),
])
def test_malformed_blobs_are_binary_format_errors(blob, message):
    q, k, v = _operands()
    with pytest.raises(BinaryFormatError, match=message):
        run_call(blob, q, k, v, None)


def test_operands_that_do_not_fit_the_program():
    q, k, v = _operands()
    blob = compile_call(AttentionWorkload(1, 2, 4, 6, 8), load_config("edge"))
    with pytest.raises(ScheduleError, match=r"q has shape \[1, 2, 5, 8\]; the program was compiled for "
                                            r"\[1, 2, 4, 8\]"):
        run_call(blob, np.zeros((1, 2, 5, 8), np.float32), k, v, None)
    with pytest.raises(ScheduleError, match="compiled for bias None"):
        run_call(blob, q, k, v, np.zeros((1, 1, 1, 6), np.float32))


def test_bridge_call_and_runners():
    import tvm

    from energon_tvm.relax import BRIDGE_FUNC, bridge

    outer, inner = Runner(), Runner(capture=True)
    bridge.bind(outer)
    assert bridge.is_registered()
    q, k, v = _operands()
    w = AttentionWorkload(1, 2, 4, 6, 8, params=MPMRFParams.dense(2))
    blob = np.frombuffer(compile_call(w, load_config("edge")), np.uint8).copy()
    meta = json.dumps({"site": "lv7", "workload": w.to_dict()})
    out = tvm.runtime.empty((1, 2, 4, 8), "float32")
    args = [*(tvm.runtime.tensor(x) for x in (q, k, v)), meta, tvm.runtime.tensor(blob), out]
    tvm.get_global_func(BRIDGE_FUNC)(*args)
    bridge.bind(inner)
    tvm.get_global_func(BRIDGE_FUNC)(*args)
    expected = mpmrf_attention(q, k, v, None, w.params)
    np.testing.assert_allclose(out.numpy(), expected.output, rtol=1e-5, atol=1e-7)
    assert len(outer.calls) == 1 and len(inner.calls) == 1
    assert outer.calls[0].inputs is None and outer.calls[0].site == "lv7"
    assert outer.calls[0].workload == w
    np.testing.assert_allclose(inner.calls[0].output, expected.output, rtol=1e-5, atol=1e-7)
    assert inner.calls[0].inputs["bias"] is None
    assert inner.summary() == {"calls": 1, "candidates": 48, "kept": 48, "final_kept_ratio": 1.0}
    assert list(inner.by_site()) == ["lv7"]


def test_importing_energon_tvm_does_not_import_tvm():
    code = ("import sys, energon_tvm, energon_tvm.executor; "
            "assert 'tvm' not in sys.modules, 'tvm imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_bias_broadcast_over_keys_equals_the_reference():
    """A bias with one value per query row ([1, 1, Sq, 1]) is expanded over the keys in DRAM: the machine
    reads a bias row of Sk values."""
    q, k, v = _operands(sq=4, sk=6)
    bias = np.array([0.0, -2.0, 1.5, -0.5], np.float32).reshape(1, 1, 4, 1)
    w = AttentionWorkload(1, 2, 4, 6, 8, bias_shape=(1, 1, 4, 1), scale=0.3)
    out, stats = run_call(compile_call(w, load_config("edge")), q, k, v, bias)
    expected = mpmrf_attention(q, k, v, bias, w.params, 0.3)
    np.testing.assert_allclose(out, expected.output, rtol=1e-5, atol=1e-7)
    assert stats["kept_ratio"] == expected.kept_ratios()
