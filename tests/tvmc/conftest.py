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
