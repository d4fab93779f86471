"""A real Hugging Face model through every exporter: a small randomly initialised BERT (eager and SDPA
attention, with an attention mask) exported by the ONNX dynamo exporter, by the TorchScript ONNX
exporter, and by torch.export. Every attention block must be offloaded and the model must match its
llvm build.

Tolerances. Each offloaded call is checked against float attention on its own captured inputs within
the INT16 bound of ``harness.int16_bound`` (dense parameters: alpha = -1). The whole model's output then
differs from the llvm build by those per-call errors carried through the later layers (output projection,
residual, LayerNorm, feed-forward). With BERT's initialisation the output projection (weights of std
0.02) shrinks an attention error far more than LayerNorm can grow it (measured: the model error is 0.05x
the largest per-call bound), so the test requires the model error to stay within ``MODEL_FACTOR`` = 1
times the largest per-call bound. GPT-2 normalises before each block instead: its residual stream keeps
the embeddings' scale (std 0.03 measured at initialisation) and the final LayerNorm multiplies it by
~1/0.03, while the output projection (std 0.01, fan-in 32) scales an attention error by ~0.06: about 2x
the per-call bound can reach the output (measured: 1.1x), and GPT-2 is held to ``GPT2_MODEL_FACTOR`` = 4.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness import build, from_onnx, int16_bound, oracle_mask, run, run_collected

from energon_tvm.mpmrf import float_attention
from energon_tvm.relax import partition_for_energon

pytestmark = [
    pytest.mark.models,
    # the exporters' own chatter (deprecations, tracer warnings) says nothing about energon
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                               "ignore::UserWarning", "ignore:Converting a tensor to a Python boolean"),
]

LAYERS = 2
MODEL_FACTOR = 1.0
GPT2_MODEL_FACTOR = 4.0


def _last_hidden(torch, model, **extra):
    """``model(input_ids, attention_mask).last_hidden_state`` as a module of positional inputs: the
    Hugging Face forward takes keyword arguments the exporters do not pass well."""

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state

    return LastHidden().eval()


def _inputs(seed: int, padded_from: int) -> dict[str, np.ndarray]:
    """Token ids [2, 8] and an attention mask whose second sequence is padded from ``padded_from``."""
    ids = np.random.default_rng(seed).integers(0, 128, (2, 8)).astype(np.int64)
    mask = np.ones((2, 8), np.int64)
    mask[1, padded_from:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def bert(request):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    config = transformers.BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, attn_implementation=request.param)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    return torch, _last_hidden(torch, model), _inputs(0, 6), request.param


def _check_model(mod, inputs, dense_params, model_factor=MODEL_FACTOR):
    pmod, report = partition_for_energon(mod, params=dense_params)
    assert len(report) == LAYERS and len(report.offloaded) == LAYERS, report.format()
    for record in report:
        w = record.workload
        assert (w.batch, w.heads, w.seq_q, w.seq_k, w.head_dim) == (2, 4, 8, 8, 8)
    out, calls = run_collected(build(pmod), inputs)
    ref = run(build(mod), inputs)
    assert len(calls.calls) == LAYERS
    bounds = []
    for call in calls.calls:
        q, k, v, bias = (call.inputs[n] for n in ("q", "k", "v", "bias"))
        scale = call.workload.effective_scale
        bound = int16_bound(q, k, v, scale)
        exact = float_attention(q, k, v, oracle_mask(call.workload, bias), scale)
        assert np.max(np.abs(call.output - exact)) <= bound
        bounds.append(bound)
    err = float(np.max(np.abs(out - ref)))
    assert err <= model_factor * max(bounds), f"model error {err:.3g}, per-call bound {max(bounds):.3g}"
    return report


def test_bert_onnx_dynamo(bert, tmp_path, dense_params):
    pytest.importorskip("onnxscript")
    torch, model, inputs, attention = bert
    path = tmp_path / "bert_dynamo.onnx"
    torch.onnx.export(model, tuple(torch.from_numpy(x) for x in inputs.values()), str(path), dynamo=True,
                      input_names=list(inputs), output_names=["last_hidden_state"], verbose=False)
    import onnx

    mod = from_onnx(onnx.load(str(path)), shape_dict={k: list(v.shape) for k, v in inputs.items()})
    report = _check_model(mod, inputs, dense_params)
    assert all("mask add" in r.form for r in report)
    if attention == "sdpa":  # SDPA scales Q and K separately and guards the softmax against NaN
        assert all("scale on Q and K" in r.form and "isnan guard" in r.form for r in report)


def test_bert_onnx_torchscript(bert, tmp_path, dense_params):
    """TVM 0.27's from_onnx fails on this export (ConstantOfShape with an empty shape); the
    onnxruntime basic-optimised copy of the same model imports."""
    import onnx

    ort = pytest.importorskip("onnxruntime")
    torch, model, inputs, _ = bert
    path = tmp_path / "bert_torchscript.onnx"
    torch.onnx.export(model, tuple(torch.from_numpy(x) for x in inputs.values()), str(path),
                      dynamo=False, input_names=list(inputs), output_names=["last_hidden_state"])
    shapes = {k: list(v.shape) for k, v in inputs.items()}
    try:
        mod = from_onnx(onnx.load(str(path)), shape_dict=shapes)
    except ValueError as err:  # the TVM bug: fall back to onnxruntime's constant-folded copy
        assert "broadcast_to" in str(err)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(tmp_path / "bert_torchscript_basic.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        mod = from_onnx(onnx.load(options.optimized_model_filepath), shape_dict=shapes)
    _check_model(mod, inputs, dense_params)


def test_bert_torch_export(bert, dense_params):
    torch, model, inputs, attention = bert
    from tvm.relax.frontend.torch import from_exported_program

    program = torch.export.export(model, tuple(torch.from_numpy(x) for x in inputs.values()))
    mod = from_exported_program(program)
    report = _check_model(mod, inputs, dense_params)
    assert all("batched-matmul reshape" in r.form for r in report)
    if attention == "sdpa":
        assert all("all-masked guard" in r.form for r in report)


@pytest.fixture(scope="module")
def gpt2():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")

    config = transformers.GPT2Config(vocab_size=128, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=32,
                                     use_cache=False, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.GPT2Model(config).eval()
    return torch, _last_hidden(torch, model, use_cache=False), _inputs(1, 5)


def test_gpt2_onnx_dynamo_is_causal_plus_padding(gpt2, tmp_path, dense_params):
    """GPT-2 builds one mask, ``where(tril & key_mask, 0, -FLT_MAX)`` [B, 1, S, S], at run time: it reaches
    Energon as ``causal`` plus a padding row per batch, and the model still matches its llvm build."""
    pytest.importorskip("onnxscript")
    import onnx

    torch, model, inputs = gpt2
    path = tmp_path / "gpt2_dynamo.onnx"
    torch.onnx.export(model, tuple(torch.from_numpy(x) for x in inputs.values()), str(path), dynamo=True,
                      input_names=list(inputs), output_names=["last_hidden_state"], verbose=False)
    mod = from_onnx(onnx.load(str(path)), shape_dict={k: list(v.shape) for k, v in inputs.items()})
    report = _check_model(mod, inputs, dense_params, GPT2_MODEL_FACTOR)
    assert all(r.workload.mask_kind == "causal+padding" and r.workload.bias_shape == (2, 1, 1, 8) for r in report)
