"""torch.export programs (.pt2) through tvmc: compiled and offloaded like ONNX, and read without
unpickling -- torch.export.load alone runs whatever a crafted archive pickles."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from energon_tvm.tvmc import compile_model, run_package, write
from energon_tvm.tvmc.main import main

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning",
                                        "ignore::UserWarning")


class _Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * 0.25, dim=-1), v)


class _Touch:
    """Unpickling this creates ``path``: the stand-in for code a crafted archive would run."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt2")
    args = tuple(torch.from_numpy(np.random.default_rng(i).standard_normal((1, 2, 8, 16)).astype(np.float32))
                 for i in range(3))
    program = torch.export.export(_Attention(), args)
    torch.export.save(program, root / "attention.pt2")
    program._example_inputs = ((_Touch(root / "ran"),), {})  # saved with torch.save: a pickle
    torch.export.save(program, root / "crafted.pt2")
    np.savez(root / "inputs.npz", **{n: a.numpy() for n, a in zip("qkv", args)})
    return root, [a.numpy() for a in args]


def test_exported_program_compiles_offloads_and_runs(programs):
    from harness import int16_bound

    root, (q, k, v) = programs
    result = compile_model(root / "attention.pt2", alpha="-1,-1")
    assert len(result.calls) == 1 and result.model.format == "pytorch"
    write(result, root / "attention.tar")
    run = run_package(root / "attention.tar", inputs=root / "inputs.npz")
    (out,) = run.outputs.values()
    expected = _Attention()(*(torch.from_numpy(x) for x in (q, k, v))).numpy()
    assert np.max(np.abs(out - expected)) <= int16_bound(q, k, v, 0.25)


def test_crafted_archive_is_refused_without_running_it(programs, capsys):
    root, _ = programs
    assert main(["compile", str(root / "crafted.pt2"), "-o", str(root / "crafted.tar")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not unpickle model files" in err[0], err
    assert not (root / "ran").exists()
    assert not (root / "crafted.tar").exists()
