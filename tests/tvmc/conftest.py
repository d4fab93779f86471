"""Fixtures of the tvmc tests: a small two-layer ONNX model with padding-masked attention, compiled once."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "relax"))
from onnx_graphs import multi_site_model  # noqa: E402


@pytest.fixture(scope="session")
def model_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tvmc")
    model, inputs = multi_site_model()
    onnx.save(model, root / "model.onnx")
    np.savez(root / "inputs.npz", **inputs)
    return root


@pytest.fixture(scope="session")
def package(model_files):
    from energon_tvm.tvmc import compile_model, write

    result = compile_model(model_files / "model.onnx")
    write(result, model_files / "model.tar")
    return model_files / "model.tar"


@pytest.fixture(scope="session")
def dynamic_model(model_files):
    """model.onnx with its inputs' batch and sequence dimensions made dynamic: it compiles only once
    --input-shapes fixes them."""
    model = onnx.load(model_files / "model.onnx")
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        dims[0].dim_param = "batch"
        dims[1 if inp.name == "x" else 3].dim_param = "seq"
    path = model_files / "dynamic.onnx"
    onnx.save(model, path)
    return path
