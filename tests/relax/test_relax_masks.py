"""Constant masks: the numpy evaluation of mask subgraphs and the causal recognition."""

from __future__ import annotations

import numpy as np
import pytest

from energon_tvm.relax.consteval import evaluate
from energon_tvm.relax.masks import split_causal


def _causal(sq, sk, shift=None, fill=-np.inf):
    shift = sk - sq if shift is None else shift
    return np.where(np.arange(sk)[None, :] > np.arange(sq)[:, None] + shift, fill, 0.0).astype(np.float32)


@pytest.mark.parametrize("const, causal, kept", [
    (_causal(8, 8), True, False),
    (_causal(4, 8), True, False),  # bottom-right aligned: key k <= q + 4
    (_causal(4, 8, shift=0), False, True),  # top-left with Sq != Sk is not Energon's causal
    (_causal(8, 8, fill=np.finfo(np.float32).min)[None, None], True, False),
    (np.zeros((1, 1, 8, 8), np.float32), False, False),  # all-zero: no bias at all
    (_causal(8, 8) + 0.5, False, True),  # causal pattern but a non-zero bias elsewhere
    (np.full((1, 8), -1e9, np.float32), False, True),
])
def test_split_causal(const, causal, kept):
    is_causal, rest = split_causal(const, const.shape[-2] if const.shape[-2] > 1 else 8, 8)
    assert is_causal == causal
    assert (rest is not None) == kept


def test_evaluates_the_index_arithmetic_of_exported_masks():
    """torch.export builds causal masks from arange / expand_dims / comparisons / where."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1,), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            pos = bb.emit(relax.op.arange(0, 6, 1, dtype="int64"))
            rows = bb.emit(relax.op.expand_dims(pos, axis=[1]))
            cols = bb.emit(relax.op.expand_dims(pos, axis=[0]))
            allowed = bb.emit(relax.op.less_equal(cols, rows))
            sliced = bb.emit(relax.op.strided_slice(allowed, [0], [1], [5]))
            mask = bb.emit(relax.op.where(sliced, relax.const(0.0), relax.const(-np.inf)))
            scale = bb.emit(relax.op.sqrt(relax.const(64.0)))
            out = bb.emit_output(relax.op.add(x, scale))
        bb.emit_func_output(out)
    func = bb.get()["main"]
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    value = evaluate(mask, bindings.get)
    np.testing.assert_array_equal(value, _causal(6, 6, shift=0)[1:5])
    assert float(evaluate(scale, bindings.get)) == 8.0
    assert evaluate(out, bindings.get) is None  # depends on the input


_RANDOM = np.random.default_rng(3).random((8, 8)) < 0.8
_RANDOM[:, 0] = True


@pytest.mark.parametrize("allowed, causal, bias_shape", [
    (np.ones((8, 8), bool), False, (2, 1, 1, 8)),            # BERT: a padding row, broadcast by the exporter
    (np.tril(np.ones((8, 8), bool)), True, (2, 1, 1, 8)),    # GPT-2: causal and padding
    (_RANDOM, False, (2, 1, 8, 8)),                          # a pattern that is neither: a bias tile
])
def test_run_time_mask_is_split_into_what_the_machine_takes(allowed, causal, bias_shape, dense_params):
    """A run-time mask ``where(allowed & keys, 0, -FLT_MAX)`` expanded to [B, 1, S, S] reaches Energon as
    its parts: a constant causal pattern becomes ``causal`` (no tensor), a row every query shares becomes
    one row per batch (padding traffic, not a bias tile per query row), anything else stays a tile. The
    call still computes what the unpartitioned model computes."""
    from harness import build, int16_bound, run, run_collected
    from relax_graphs import expanded_padding_module

    from energon_tvm.relax import partition_for_energon

    mod, inputs = expanded_padding_module(allowed)
    pmod, report = partition_for_energon(mod, params=dense_params)
    (record,) = report.records
    assert record.offloaded, report.format()
    assert (record.workload.causal, record.workload.bias_shape) == (causal, bias_shape)
    out, collected = run_collected(build(pmod), inputs)
    (call,) = collected.calls
    assert call.inputs["bias"].shape == bias_shape
    ref = run(build(mod), inputs)
    bound = int16_bound(*(call.inputs[n] for n in "qkv"), call.workload.effective_scale)
    assert float(np.max(np.abs(out - ref))) <= bound
    expected_candidates = int((np.broadcast_to(allowed, (2, 2, 8, 8)) & inputs[3]).sum())
    assert call.stats["candidates"] == expected_candidates  # exactly the model's unmasked pairs


def test_rows_shared_is_proven_not_guessed():
    from tvm import relax

    from energon_tvm.relax.consteval import rows_shared

    def var(name, shape, dtype="float32"):
        return relax.Var(name, relax.TensorType(shape, dtype))

    row, tile = var("row", (2, 1, 1, 8)), var("tile", (2, 1, 8, 8))
    equal = relax.const(np.ones((1, 1, 8, 8), np.float32))
    unequal = relax.const(np.triu(np.ones((8, 8), np.float32)))
    assert rows_shared(row, lambda _: None)
    assert rows_shared(relax.op.add(row, equal), lambda _: None)
    assert not rows_shared(relax.op.add(row, unequal), lambda _: None)
    assert not rows_shared(tile, lambda _: None)  # a run-time tensor of full shape: nothing to prove it
    assert not rows_shared(relax.op.nn.softmax(relax.op.add(row, equal)), lambda _: None)  # not elementwise
