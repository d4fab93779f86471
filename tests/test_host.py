"""The host build's default schedules: they apply to the ops a transformer is made of, and they reorder
loops only -- outputs equal an unscheduled llvm build of the same module and a numpy computation."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _block(x_shape=(2, 24, 64), hidden=96):
    """x -> matmul + bias -> gelu -> softmax over the last axis -> layer norm -> transpose: the
    kernel kinds of a transformer layer (a fused matmul with an epilogue, reductions, layout)."""
    from tvm import relax

    rng = np.random.default_rng(0)
    w = rng.standard_normal((x_shape[-1], hidden)).astype(np.float32) / 8
    b = rng.standard_normal(hidden).astype(np.float32)
    gamma, beta = rng.standard_normal(hidden).astype(np.float32), rng.standard_normal(hidden).astype(np.float32)
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(bb.emit(relax.op.matmul(x, relax.const(w))), relax.const(b)))
            h = bb.emit(relax.op.nn.gelu(h))
            h = bb.emit(relax.op.nn.softmax(h, axis=-1))
            h = bb.emit(relax.op.nn.layer_norm(h, relax.const(gamma), relax.const(beta), axes=[-1]))
            out = bb.emit_output(relax.op.permute_dims(h, [0, 2, 1]))
        bb.emit_func_output(out)
    return bb.get(), (w, b, gamma, beta)


def _numpy(x, w, b, gamma, beta):
    from math import erf

    h = x.astype(np.float64) @ w + b
    h = h * 0.5 * (1 + np.vectorize(erf)(h / np.sqrt(2)))
    h = np.exp(h - h.max(-1, keepdims=True))
    h /= h.sum(-1, keepdims=True)
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * gamma + beta
    return h.transpose(0, 2, 1)


def test_scheduled_build_equals_unscheduled_llvm_and_numpy():
    import tvm
    from tvm import relax

    from energon_tvm import host

    mod, consts = _block()
    x = np.random.default_rng(1).standard_normal((2, 24, 64)).astype(np.float32)

    def run(ex):
        return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()

    scheduled, plain = run(host.build(mod)), run(tvm.compile(mod, target="llvm"))
    np.testing.assert_array_equal(scheduled, plain)  # loops reordered, every sum in the same order
    np.testing.assert_allclose(scheduled, _numpy(x, *consts), rtol=1e-4, atol=1e-4)


def test_every_kernel_of_a_transformer_layer_gets_a_schedule():
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    from energon_tvm import host

    mod, _ = _block()
    target = host.host_target()
    with target:
        legal = tvm.transform.Sequential(cpu.legalize_passes(target))(mod)
        scheduled = host.schedules()(legal)
    kernels = {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    assert any(name.startswith("fused_matmul") for name in kernels)
    unscheduled = [name for name, f in kernels.items() if "tirx.is_scheduled" not in f.attrs]
    assert unscheduled == []
    matmul = next(f for name, f in kernels.items() if name.startswith("fused_matmul"))
    assert "T.parallel" in matmul.script() and "T.vectorized" in matmul.script()


def test_mcpu_is_validated():
    from energon_tvm import host

    assert host.valid_mcpu("x86-64-v2") and not host.valid_mcpu("pentium-9000")
