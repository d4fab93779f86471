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


def test_fast_math_build_is_close_to_the_exact_one_and_not_equal():
    """--target-llvm-fast-math on: GELU's erf and softmax's exp become TVM's approximations; outputs stay
    within 1e-5 of the exact build and of numpy (and differ from the exact build: the flag is in force)."""
    import tvm
    from tvm import relax

    from energon_tvm import host

    mod, consts = _block()
    x = np.random.default_rng(1).standard_normal((2, 24, 64)).astype(np.float32)

    def run(ex):
        return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()

    fast, exact = run(host.build(mod, fast_math=True)), run(host.build(mod))
    assert not np.array_equal(fast, exact)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast, _numpy(x, *consts), rtol=1e-4, atol=1e-4)
    kernels = {fast_math: host.kernels(mod, host.host_target(), fast_math=fast_math) for fast_math in (False, True)}
    names = {gv.name_hint for gv in kernels[True].functions}
    assert any("fast_erf" in name for name in names) and any("fast_softmax" in name for name in names), names
    # GELU's erf is the approximation in the fast build (no libm call left) and libm's in the exact one
    assert "T.erf(" in kernels[False].script() and "T.erf(" not in kernels[True].script()


def test_fast_math_gelu_tanh_is_its_formula_with_the_fast_tanh():
    """nn.gelu_tanh under fast math: TVM's formula with fast_tanh, within 1e-5 of the exact build and of
    numpy's tanh formula; float16 GELU is left to TVM's legalisation."""
    import math

    import tvm
    from tvm import relax

    from energon_tvm import host

    def module(op, dtype):
        x = relax.Var("x", relax.TensorType((4, 256), dtype))
        bb = relax.BlockBuilder()
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(op(x))
            bb.emit_func_output(out)
        return bb.get()

    mod = module(relax.op.nn.gelu_tanh, "float32")
    x = np.linspace(-6, 6, 1024, dtype=np.float32).reshape(4, 256)

    def run(ex):
        return relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()

    fast, exact = run(host.build(mod, fast_math=True)), run(host.build(mod))
    assert "T.tanh(" not in host.kernels(mod, host.host_target(), fast_math=True).script()
    x64 = x.astype(np.float64)
    formula = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-5)
    np.testing.assert_allclose(fast, formula, rtol=0, atol=1e-5)
    half = module(relax.op.nn.gelu, "float16")
    assert "nn.gelu" in str(tvm.transform.Sequential([host.gelu_as_formula()])(half).script())


def test_fast_math_option_is_on_or_off():
    from energon_tvm.tvmc.errors import TVMCError
    from energon_tvm.tvmc.target import parse_fast_math, parse_target

    assert (parse_fast_math("on"), parse_fast_math("OFF"), parse_fast_math(None)) == (True, False, False)
    with pytest.raises(TVMCError, match="--target-llvm-fast-math 'yes': on or off"):
        parse_fast_math("yes")
    assert parse_target("energon, llvm", fast_math="on").describe().endswith("llvm (fast-math)")


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


def _run_both(mod, *arrays, mcpu=None):
    """(the scheduled build's output, TVM's unscheduled build's) of ``mod`` on ``arrays``."""
    import tvm
    from tvm import relax

    from energon_tvm import host

    def run(ex):
        return relax.VirtualMachine(ex, tvm.cpu())["main"](*map(tvm.runtime.tensor, arrays)).numpy()

    return run(host.build(mod, mcpu)), run(tvm.compile(mod, target=host.host_target(mcpu)))


def _kernels(mod, mcpu=None):
    import tvm

    from energon_tvm import host

    target = host.host_target(mcpu)
    with target:
        scheduled = host.schedules()(host.kernels(mod, target))
    return {gv.name_hint: f for gv, f in scheduled.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def _module(params, body):
    """A Relax ``main(*params)`` whose one output is ``body(*vars)``."""
    from tvm import relax

    vars_ = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in params]
    bb = relax.BlockBuilder()
    with bb.function("main", vars_):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *vars_))
        bb.emit_func_output(out)
    return bb.get()


def test_a_patch_embedding_becomes_a_matmul_that_sums_in_the_convolutions_order():
    from tvm import relax

    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 3, 4, 4)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)

    def patches(bb, x):
        y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=(4, 4)))
        return relax.op.add(y, relax.const(b.reshape(1, 8, 1, 1)))

    mod = _module([("x", (1, 3, 16, 12))], patches)
    kernels = _kernels(mod)
    assert not any("conv2d" in name for name in kernels) and any("matmul" in name for name in kernels)
    assert all("tirx.is_scheduled" in f.attrs for f in kernels.values())
    x = rng.standard_normal((1, 3, 16, 12)).astype(np.float32)
    scheduled, plain = _run_both(mod, x)
    np.testing.assert_array_equal(scheduled, plain)  # plain: TVM's conv2d loop nest, channel-row-column sums
    blocks = x.reshape(1, 3, 4, 4, 3, 4).transpose(0, 2, 4, 1, 3, 5).reshape(1, 12, 48).astype(np.float64)
    want = (blocks @ w.reshape(8, 48).T.astype(np.float64)).transpose(0, 2, 1).reshape(1, 8, 4, 3)
    np.testing.assert_allclose(scheduled, want + b.reshape(1, 8, 1, 1), rtol=1e-5, atol=1e-5)


def test_other_convolutions_stay_convolutions():
    from tvm import relax

    w = np.ones((4, 3, 3, 3), np.float32)
    mod = _module([("x", (1, 3, 8, 8))], lambda bb, x: relax.op.nn.conv2d(x, relax.const(w), padding=1))
    assert any("conv2d" in name for name in _kernels(mod))


@pytest.mark.parametrize("mcpu", [None, "x86-64-v3"])
def test_matmuls_of_any_shape_are_tiled_and_compute_what_the_plain_loops_do(mcpu):
    """Rows not a multiple of the tile's six, columns no vector divides (ViT's 197 x 197 scores: padded),
    and a batch of heads."""
    from tvm import relax

    rng = np.random.default_rng(3)
    q, k = (rng.standard_normal(s).astype(np.float32) for s in ((1, 2, 7, 8), (1, 2, 8, 13)))

    def scores(bb, q_, k_):
        return relax.op.multiply(bb.emit(relax.op.matmul(q_, k_)), relax.const(0.5, "float32"))

    mod = _module([("q", q.shape), ("k", k.shape)], scores)
    kernels = _kernels(mod, mcpu)
    matmul = next(f for name, f in kernels.items() if "matmul" in name)
    assert "T.parallel" in matmul.script() and "T.vectorized" in matmul.script() and "_pad" in matmul.script()
    scheduled, plain = _run_both(mod, q, k, mcpu=mcpu)
    if mcpu is None:
        np.testing.assert_array_equal(scheduled, plain)
    np.testing.assert_allclose(scheduled, (q.astype(np.float64) @ k) * 0.5, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mcpu, lanes", [(None, 4), ("x86-64-v2", 4), ("x86-64-v3", 8), ("x86-64-v4", 16)])
def test_the_register_tile_follows_the_vector_width(mcpu, lanes):
    from energon_tvm import host

    tile = host.MicroKernel.for_target(host.host_target(mcpu))
    assert (tile.lanes, tile.rows, tile.width) == (lanes, 6, 2 * lanes)


@pytest.mark.parametrize("extent, block", [(1536, (32, 1536)), (64, (32, 64)), (24, (8, 24)),
                                           (197, (16, 208)), (6, (4, 8))])
def test_columns_are_blocked_evenly_or_padded_by_at_most_an_eighth(extent, block):
    from energon_tvm.host import MicroKernel

    assert MicroKernel(lanes=16).column_block(extent) == block


def test_row_reductions_interleave_rows_and_keep_each_rows_order():
    from tvm import relax

    from energon_tvm import host

    mod, _ = _block()
    kernels = _kernels(mod)
    for name in ("softmax", "layer_norm"):
        script = kernels[name].script()
        assert "T.parallel" in script and "T.unroll" in script, name  # rows unrolled inside each sum
    # rows that no block of eight divides (ViT's 197 a head): the last block has a tail
    x = np.random.default_rng(5).standard_normal((1, 2, 7, 9)).astype(np.float32)
    scheduled, plain = _run_both(_module([("x", x.shape)], lambda bb, v: relax.op.nn.softmax(v, -1)), x)
    np.testing.assert_array_equal(scheduled, plain)
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    np.testing.assert_allclose(scheduled, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    # a sum over a middle axis is not a row reduction: TVM's dlight rule takes it, outputs unchanged
    x = np.random.default_rng(4).standard_normal((4, 6, 8)).astype(np.float32)
    col = _module([("x", x.shape)], lambda bb, v: relax.op.sum(v, axis=[1]))
    import tvm

    target = host.host_target()
    func = next(f for f in host.kernels(col, target).functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert host.RowReduction().apply(func, target, False) is None
    scheduled, plain = _run_both(col, x)
    np.testing.assert_array_equal(scheduled, plain)
    np.testing.assert_allclose(scheduled, x.astype(np.float64).sum(1), rtol=1e-5, atol=1e-5)
