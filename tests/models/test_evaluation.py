"""The per-layer attention hook of the accuracy evaluation, on a small random BERT (no wheel needed)."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from energon_tvm.isa.numerics import FilterRound, MPMRFParams  # noqa: E402

from energon_tvm.calibration import calibrate  # noqa: E402
from energon_tvm.models.evaluation import LayerAttention, SettingResult, TaskResult, markdown, site_name  # noqa: E402
from energon_tvm.mpmrf import mpmrf_attention  # noqa: E402

NAME = "energon_eval_test"


def _model(hook):
    from transformers import AttentionInterface, BertConfig, BertModel
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, hook)
    AttentionMaskInterface.register(NAME, eager_mask)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    cfg._attn_implementation = "eager"
    eager = BertModel(cfg).eval()
    hooked_cfg = copy.deepcopy(cfg)
    hooked_cfg._attn_implementation = NAME
    hooked = BertModel(hooked_cfg).eval()
    hooked.load_state_dict(eager.state_dict())
    return eager, hooked


def _inputs():
    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1, 50, (2, 12)))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 9:] = 0
    return ids, mask


def test_float_hook_equals_eager_attention_and_captures_every_layer():
    hook = LayerAttention()
    eager, hooked = _model(hook)
    ids, mask = _inputs()
    hook.reset(None, capture=True)
    with torch.no_grad():
        ref = eager(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
        out = hooked(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    np.testing.assert_allclose(out, ref, atol=2e-5)
    assert sorted(hook.capture) == [0, 1, 2] and all(len(c) == 1 for c in hook.capture.values())
    sample = hook.capture[1][0]
    assert sample.q.shape == (2, 2, 12, 16) and (sample.mask[1, 0, 0, 9:] < -1e4).all()


def test_per_layer_params_reach_their_layer():
    hook = LayerAttention()
    _, hooked = _model(hook)
    ids, mask = _inputs()
    hook.reset(None, capture=True)
    with torch.no_grad():
        hooked(input_ids=ids, attention_mask=mask)
    samples = {site_name(layer): calls for layer, calls in hook.capture.items()}
    cal = calibrate(samples, rule="mpmrf", budget=0.6)  # random weights: flat rows, all within a logit
    per_layer = {layer: cal.params_for(site_name(layer)) for layer in range(3)}
    per_layer[2] = MPMRFParams((FilterRound(4, 2, -1.0), FilterRound(4, 4, -1.0)))  # layer 2 keeps everything
    hook.reset(per_layer, capture=True)
    with torch.no_grad():
        hooked(input_ids=ids, attention_mask=mask)
    kept = cand = 0
    for layer, (s,) in sorted(hook.capture.items()):
        res = mpmrf_attention(s.q, s.k, s.v, s.mask, per_layer[layer], s.scale)
        kept, cand = kept + res.final_kept.sum(), cand + res.candidates.sum()
        if layer == 2:
            assert res.kept_ratio() == 1.0
    assert hook.ratios()[-1] == pytest.approx(kept / cand)
    assert hook.ratios()[-1] < 1.0


def test_markdown_reports_points_and_paired_errors():
    rows = (SettingResult("dense", (), 0.78, 0.0066, 0.0, 0.0, 1.0),
            SettingResult("calibrated@0.9", (0.5, 0.25), 0.776, 0.0066, -0.004, 0.0031, 1.0))
    text = markdown([TaskResult("m", "movies-polarity", "accuracy", 2000, 4000, rows)])
    assert "| calibrated@0.9 | 0.500 | 0.250 | 77.60 | 0.66 | -0.40 | 0.31 |" in text
    back = TaskResult.from_dict(TaskResult("m", "t", "spearman", 1, 2, rows).to_dict())
    assert back.settings == rows


def test_merge_unites_runs_of_one_protocol_and_refuses_others():
    from energon_tvm.isa.errors import EnergonError

    from energon_tvm.models.evaluation import merge

    def row(name, metric):
        return SettingResult(name, (0.5,), metric, 0.01, metric - 0.78, 0.002, 1.0)

    a = TaskResult("m", "t", "accuracy", 10, 20, (row("dense", 0.78), row("calibrated@0.95", 0.77),
                                                   row("gap 8/4", 0.775)))
    b = TaskResult("m", "t", "accuracy", 10, 20, (row("dense", 0.78), row("calibrated@0.9", 0.76),
                                                   row("mpmrf 0/-0.25", 0.74), row("gap 8/4", 0.776)))
    other = TaskResult("m", "u", "accuracy", 10, 20, (row("dense", 0.7),))
    merged = merge([a, b, other])
    assert [r.task for r in merged] == ["t", "u"]
    # dense, fixed settings in their declared order, budgets loosest first; the later run's gap 8/4 wins
    assert [s.setting for s in merged[0].settings] == ["dense", "mpmrf 0/-0.25", "gap 8/4", "calibrated@0.9",
                                                        "calibrated@0.95"]
    assert next(s for s in merged[0].settings if s.setting == "gap 8/4").metric == 0.776
    shifted = TaskResult("m", "t", "accuracy", 10, 20, (row("dense", 0.79),))
    with pytest.raises(EnergonError, match="cannot be merged"):
        merge([a, shifted])
