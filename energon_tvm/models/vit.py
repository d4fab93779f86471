"""A ViT-S/16-shaped vision transformer with random weights, and its ONNX export.

No pretrained ViT ships offline, and a host-speed benchmark does not need trained weights: it needs the
shapes. :data:`VIT_S16` is ViT-S/16's (224 x 224 images cut into 16 x 16 patches, 196 patches plus the
class token = 197 tokens, hidden 384, 12 layers of 6 heads, MLP 1536); :func:`export_onnx` builds
transformers' ``ViTModel`` of that shape with weights drawn from a fixed seed and exports it the way
:func:`~energon_tvm.models.minilm.export_onnx` exports all-MiniLM-L6-v2 (``torch.onnx.export(...,
dynamo=True)``, fixed shapes, one file): ``pixel_values`` float32 ``[batch, 3, H, W]`` in,
``last_hidden_state`` float32 ``[batch, tokens, hidden]`` out. The same seed gives the same weights, so
two exports compute the same function.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .minilm import ModelInputError, _offline, _written_whole, check_batch

INPUT_NAME = "pixel_values"
OUTPUT_NAME = "last_hidden_state"
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")


@dataclass(frozen=True)
class ViTShape:
    """The shape of a ViT encoder; every field a positive integer, the image a whole number of patches
    and the hidden size a whole number of heads (checked when made)."""

    image_size: int = 224
    patch_size: int = 16
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    mlp_size: int = 1536
    channels: int = 3

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelInputError(f"ViT {name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ModelInputError(f"ViT image_size {self.image_size} is not a multiple of patch_size "
                                  f"{self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ModelInputError(f"ViT hidden_size {self.hidden_size} is not a multiple of num_heads "
                                  f"{self.num_heads}")

    @property
    def tokens(self) -> int:
        """Patches plus the class token (ViT-S/16 at 224: 197)."""
        return (self.image_size // self.patch_size) ** 2 + 1

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


#: ViT-S/16 (DeiT-S / timm vit_small_patch16_224)
VIT_S16 = ViTShape()


def build_torch_model(shape: ViTShape = VIT_S16, seed: int = 0, attn: str = "eager"):
    """transformers' ``ViTModel`` of ``shape`` without its pooler, weights drawn with ``torch.manual_seed
    (seed)`` by the model's own initialiser, in eval mode (dropout off). ``attn``: ``"eager"`` (explicit
    matmul/softmax/matmul, the form the Energon partitioner looks for) or ``"sdpa"``."""
    if attn not in ATTN_IMPLEMENTATIONS:
        raise ModelInputError(f"attention implementation {attn!r} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ModelInputError(f"seed must be a non-negative integer, got {seed!r}")
    _offline()
    import torch
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=shape.image_size, patch_size=shape.patch_size, num_channels=shape.channels,
                       hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                       num_attention_heads=shape.num_heads, intermediate_size=shape.mlp_size,
                       attn_implementation=attn)
    torch.manual_seed(seed)
    return ViTModel(config, add_pooling_layer=False).eval()


def _hidden_state_module(model):
    """Wrap the ViTModel so that the exported graph has one input and one named output."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, vit):
            super().__init__()
            self.vit = vit

        def forward(self, pixel_values):
            return self.vit(pixel_values=pixel_values).last_hidden_state

    return LastHiddenState(model).eval()


def random_images(batch: int = 1, shape: ViTShape = VIT_S16, seed: int = 0) -> np.ndarray:
    """``[batch, channels, image, image]`` float32 standard-normal pixels (normalised images' scale)."""
    batch = check_batch(batch)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, shape.channels, shape.image_size, shape.image_size)).astype(np.float32)


def export_onnx(path: str | os.PathLike = "out/vit-s16.onnx", shape: ViTShape = VIT_S16, seed: int = 0,
                batch: int = 1, attn: str = "eager", opset: int | None = None) -> Path:
    """Export :func:`build_torch_model` of ``shape`` and ``seed`` to ONNX with fixed shapes (input
    ``pixel_values`` ``[batch, 3, H, W]``, output ``last_hidden_state`` ``[batch, tokens, hidden]``),
    weights inside the one file (~87 MiB for ViT-S/16), written whole to ``path`` (its folder is
    created). Returns the path."""
    import torch

    path = Path(path)
    if path.suffix != ".onnx":
        raise ModelInputError(f"ONNX output path must end in .onnx, got {str(path)!r}")
    module = _hidden_state_module(build_torch_model(shape, seed, attn))
    example = (torch.from_numpy(random_images(batch, shape, seed)),)
    with _written_whole(path) as tmp, torch.no_grad():
        torch.onnx.export(module, example, str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)
    return path
