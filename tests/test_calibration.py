"""Calibration of MP-MRF thresholds against mpmrf_attention and an independent float softmax."""

import copy
import json

import numpy as np
import pytest
from energon_tvm.isa.errors import EnergonError

from energon_tvm.calibration import (
    ALPHA_GRID,
    GAP_GRID,
    KEEP_ALL,
    AttentionSample,
    Calibration,
    CalibrationError,
    ThresholdsError,
    calibrate,
    evaluate,
    grid_tables,
    kept_sets,
)
from energon_tvm.mpmrf import MPMRFParams, mpmrf_attention

#: logit standard deviation of each head: flat (0.5) to peaked (4)
TEMPS = (0.5, 1.0, 2.0, 4.0)


def _sample(rng, temps=TEMPS, b=2, s=24, d=16, padded=True):
    """Attention whose logits are ``temperature * noise`` per head (q.k*scale ~ N(0, temp**2)), with a few
    keys aligned with the queries as trained attention has, and padding masked out."""
    h = len(temps)
    q = rng.standard_normal((b, h, s, d)) * np.asarray(temps).reshape(1, h, 1, 1)
    k = rng.standard_normal((b, h, s, d))
    k[:, :, :2] += 0.5 * q.mean(axis=2, keepdims=True) / np.asarray(temps).reshape(1, h, 1, 1)
    v = rng.standard_normal((b, h, s, d))
    lens = rng.integers(s // 2, s + 1, b) if padded else np.full(b, s)
    mask = np.where(np.arange(s)[None] < lens[:, None], 0.0, -np.inf)[:, None, None, :]
    return AttentionSample(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                           mask.astype(np.float32))


def _samples(seed, n=4, **kw):
    rng = np.random.default_rng(seed)
    return [_sample(rng, **kw) for _ in range(n)]


def _oracle_probs(sample):
    """Float64 softmax of q.k*scale + mask over the candidates, written out with einsum."""
    d = sample.q.shape[-1]
    scale = 1 / np.sqrt(d) if sample.scale is None else sample.scale
    logits = np.einsum("bhqd,bhkd->bhqk", sample.q.astype(np.float64), sample.k.astype(np.float64)) * scale
    m = np.broadcast_to(sample.mask, logits.shape) if sample.mask is not None else np.zeros(logits.shape)
    cand = m > -1e4
    logits = np.where(cand, logits + np.where(cand, m, 0), -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True), cand


def _oracle_quality(samples, params):
    """Per head: mean kept mass over rows and kept pairs per round, from mpmrf_attention's kept sets."""
    h = samples[0].heads
    masses, kept, cands = [[] for _ in range(h)], 0, 0  # rows of the samples all have candidates
    for s in samples:
        res = mpmrf_attention(s.q, s.k, s.v, s.mask, params, s.scale)
        p, cand = _oracle_probs(s)
        row_mass = (p * res.kept[-1]).sum(-1)
        for i in range(h):
            masses[i].extend(row_mass[:, i].ravel().tolist())
        kept = kept + np.array([k.sum(axis=(0, 2, 3)) for k in res.kept])
        cands = cands + cand.sum(axis=(0, 2, 3))
    return np.array([np.mean(m) for m in masses]), kept, cands, np.array([np.percentile(m, 10) for m in masses])


@pytest.fixture(scope="module")
def gap_calibration():
    samples = {"layer0": _samples(1), "layer1": _samples(2)}
    return calibrate(samples, rule="gap", budget=0.99), samples


def test_mass_bounds_the_output_error():
    """The module's claim: |o - o_K| <= 2 (1 - mass(K)) max|v| for any kept set K."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        p = rng.dirichlet(np.full(n, rng.uniform(0.05, 2)))
        v = rng.standard_normal((n, 8)) * rng.uniform(0.1, 10)
        keep = rng.random(n) < rng.uniform(0.1, 1)
        keep[np.argmax(p)] = True
        m = p[keep].sum()
        o, o_k = p @ v, (p * keep) @ v / m
        assert np.abs(o - o_k).max() <= 2 * (1 - m) * np.abs(v).max() + 1e-12


@pytest.mark.parametrize("rule", ["gap", "mpmrf"])
def test_grid_tables_match_mpmrf_attention_on_every_combination(rule):
    samples = _samples(3, n=2)
    grid = (6.0, 1.5, 3.25, 0.5) if rule == "gap" else (0.5, -0.25, 0.0, -1.0)
    tables = grid_tables(samples, rule=rule, grid=grid)
    np.testing.assert_array_equal(tables.rows, sum(s.q.shape[0] * s.q.shape[2] for s in samples))
    for i, g1 in enumerate(grid):
        for j, g2 in enumerate(grid):
            params = MPMRFParams.from_values(rule, (g1, g2))
            mass, kept, cands, _ = _oracle_quality(samples, params)
            np.testing.assert_allclose(tables.mass[i, j] / tables.rows, mass, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(tables.kept[0][i], kept[0])
            np.testing.assert_array_equal(tables.kept[1][i, j], kept[1])
            np.testing.assert_array_equal(tables.candidates, cands)


@pytest.mark.parametrize("rule", ["gap", "mpmrf"])
def test_kept_sets_and_mass_are_mpmrf_attentions(rule, gap_calibration):
    c, samples = gap_calibration if rule == "gap" else (None, {"layer0": _samples(4)})
    c = c or calibrate(samples, rule=rule, budget=0.98)
    params = c.params_for("layer0")
    for s in samples["layer0"]:
        res = mpmrf_attention(s.q, s.k, s.v, s.mask, params, s.scale)
        for mine, oracle in zip(kept_sets(s, params), res.kept, strict=True):
            np.testing.assert_array_equal(mine, oracle)
    mass, kept, cands, p10 = _oracle_quality(samples["layer0"], params)
    q = c.site("layer0").quality
    np.testing.assert_allclose(q.mass_mean, mass, rtol=0, atol=1e-12)
    np.testing.assert_allclose(q.mass_p10, p10, rtol=0, atol=1e-12)
    np.testing.assert_allclose(q.kept_ratio, kept / cands, rtol=0, atol=1e-12)
    assert min(q.mass_mean) >= c.budget


def test_budget_holds_on_held_out_samples(gap_calibration):
    c, _ = gap_calibration
    held_out = {"layer0": _samples(11, n=6), "layer1": _samples(12, n=6)}
    for name, quality in evaluate(c, held_out).items():
        assert min(quality.mass_mean) >= c.budget - 0.01, (name, quality.mass_mean)


def test_peaked_heads_get_sparser_thresholds_than_flat_heads(gap_calibration):
    c, _ = gap_calibration
    for site in c.sites:
        final = site.quality.kept_ratio[-1]
        assert final[-1] < final[0] - 0.2, final  # TEMPS[-1] is the peaked head, TEMPS[0] the flat one
        assert list(final) == sorted(final, reverse=True), final
        assert site.flagged == ()


def test_values_are_on_the_fixed_point_grid_and_params_carry_them(gap_calibration):
    c, _ = gap_calibration
    site = c.site("layer1")
    params = c.params_for("layer1")
    for r, (values, (qb, kb)) in enumerate(zip(site.values, c.bits, strict=True)):
        rnd = params.rounds[r]
        assert (rnd.q_bits, rnd.k_bits, rnd.rule) == (qb, kb, "gap")
        assert rnd.head_values == values
        assert rnd.gap in values and sum(v <= rnd.gap for v in values) == (len(values) + 1) // 2
        assert all(v in GAP_GRID and v * 64 == int(v * 64) for v in values)


def test_tighter_budget_never_keeps_fewer_keys():
    samples = {"s": _samples(5, n=3)}
    costs, masses = [], []
    for budget in (0.9, 0.95, 0.98, 0.995, 0.999):
        q = calibrate(samples, rule="mpmrf", budget=budget).site("s").quality
        costs.append(np.array(q.kept_ratio[1]) + 0.25 * np.array(q.kept_ratio[0]))
        masses.append(np.array(q.mass_mean))
        assert masses[-1].min() >= budget
    assert np.all(np.diff(costs, axis=0) >= 0), costs


def test_unreachable_budget_keeps_all_and_flags_the_head():
    samples = {"s": _samples(6, n=2)}
    c = calibrate(samples, rule="gap", budget=1.0, grid=(0.5, 1.0, 2.0))
    site = c.site("s")
    assert site.flagged == (0, 1, 2, 3)
    assert site.values == ((KEEP_ALL["gap"],) * 4,) * 2
    np.testing.assert_allclose(site.quality.mass_mean, 1.0, atol=1e-12)
    c = calibrate(samples, rule="mpmrf", budget=1.0, grid=ALPHA_GRID[:-1])
    assert c.site("s").flagged == (0, 1, 2, 3) and c.site("s").values[0] == (-1.0,) * 4


def test_progress_bar(capsys):
    calibrate({"s": _samples(7, n=2)}, progress="thresholds", grid=(1.0, 4.0))
    assert "thresholds" in capsys.readouterr().err


def test_round_trip(gap_calibration):
    c, _ = gap_calibration
    d = json.loads(json.dumps(c.to_dict()))
    assert d["format"] == "energon-thresholds" and d["version"] == 1
    assert Calibration.from_dict(d) == c


def _set(path, value):
    def mutate(d):
        *head, last = path
        target = d
        for key in head:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value(target[last]) if callable(value) else value
    return mutate


MALFORMED = [
    (_set(["format"], "thresholds"), "format"),
    (_set(["version"], 2), "version"),
    (_set(["version"], True), "version"),
    (_set(["rule"], "mean"), "rule"),
    (_set(["bits"], [[4, 4], [4, 2]]), "bits[1]"),
    (_set(["bits", 1, 1], "4"), "bits[1][1]"),
    (_set(["budget"], 1.5), "budget"),
    (_set(["budget"], KeyError), "budget"),
    (_set(["view"], "nearest"), "view"),
    (_set(["spare"], 1), "spare"),
    (_set(["sites"], {}), "sites"),
    (_set(["sites", 0, "values", 1, 2], 100.0), "sites[0].values[1][2]"),
    (_set(["sites", 0, "values", 0, 1], 3.0078125), "sites[0].values[0][1]"),
    (_set(["sites", 0, "values"], lambda v: v[:1]), "sites[0].values"),
    (_set(["sites", 0, "values", 0], lambda v: v[:3]), "sites[0].values[0]"),
    (_set(["sites", 0, "mass_mean", 1], 1.2), "sites[0].mass_mean[1]"),
    (_set(["sites", 1, "mass_p10", 0], "0.9"), "sites[1].mass_p10[0]"),
    (_set(["sites", 0, "kept_ratio", 1, 0], 1.0), "sites[0].kept_ratio[1][0]"),
    (_set(["sites", 1, "name"], "layer0"), "sites[1].name"),
    (_set(["sites", 0, "flagged"], [4]), "sites[0].flagged[0]"),
    (_set(["sites", 0, "heads"], 0), "sites[0].heads"),
    (_set(["sites", 0, "rows", 2], -1), "sites[0].rows[2]"),
]


@pytest.mark.parametrize("mutate,path", MALFORMED, ids=[p for _, p in MALFORMED])
def test_malformed_records_are_rejected_naming_the_field(gap_calibration, mutate, path):
    d = copy.deepcopy(gap_calibration[0].to_dict())
    mutate(d)
    with pytest.raises(ThresholdsError) as info:
        Calibration.from_dict(d)
    msg = str(info.value)
    assert isinstance(info.value, EnergonError) and "\n" not in msg
    assert msg.startswith(f"thresholds {path} = "), msg


def test_bad_samples_and_arguments_are_typed_errors():
    rng = np.random.default_rng(8)
    q = rng.standard_normal((1, 2, 8, 4)).astype(np.float32)
    with pytest.raises(CalibrationError, match="do not match"):
        AttentionSample(q, q[:, :1], q[:, :1])
    with pytest.raises(CalibrationError, match="broadcast"):
        AttentionSample(q, q, q, np.zeros((3, 8), np.float32))
    good = {"s": [AttentionSample(q, q, q)]}
    with pytest.raises(CalibrationError, match=r"budget = 1\.5"):
        calibrate(good, budget=1.5)
    with pytest.raises(CalibrationError, match=r"bits\[1\]"):
        calibrate(good, bits=((4, 4), (2, 4)))
    with pytest.raises(CalibrationError, match="3 heads"):
        calibrate({"s": [AttentionSample(q, q, q), AttentionSample(*[np.tile(q, (1, 2, 1, 1))[:, :3]] * 3)]})
    c = calibrate(good, grid=(2.0,))
    with pytest.raises(CalibrationError, match="no calibrated site 't'"):
        evaluate(c, {"t": good["s"]})
