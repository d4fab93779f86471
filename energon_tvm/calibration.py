"""Calibration of MP-MRF thresholds per attention site, head and filter round to a quality budget.

What this module owns: the quality measure of a kept set (softmax mass), the joint search of every
round's threshold value per head over a grid, the record of the choice (:class:`Calibration`, with its
JSON form ``{"format": "energon-thresholds", "version": 1, ...}``) and its check on held-out samples
(:func:`evaluate`). The arithmetic is ``energon_tvm.mpmrf``'s own (``int16_codes``, ``round_scores``,
``unit_scale``, ``row_threshold``), so the kept sets computed here are the ones ``mpmrf_attention`` keeps.

**The measure.** For a query row with float attention probabilities ``p_j`` (softmax of
``q . k_j * scale + mask_j`` over the row's candidates, float64) and a kept set K, the kept mass is
``m = sum_{j in K} p_j``. A head's quality is the mean of m over its valid rows (rows with at least one
candidate) across the samples; its 10th percentile is reported too. Why mass: attention over K outputs
``o' = sum_K p_j v_j / m`` where dense attention outputs ``o = sum_j p_j v_j``, so

    o - o' = (1 - 1/m) sum_K p_j v_j + sum_{j not in K} p_j v_j,
    |o - o'| <= (1/m - 1) m V + (1 - m) V = 2 (1 - m) V,      V = max_j |v_j|,

since ``|sum_K p_j v_j| <= m V`` and the dropped probabilities sum to 1 - m. The bound holds whatever
the model computes with the output, so a mass budget bounds every row's output error by a fixed fraction
of its value range (INT16 quantisation of the surviving attention adds its own, separate, error).

**The search.** For every site, head and combination of one grid value per round (round r+1's
statistics depend on round r's survivors, so rounds are searched jointly, not one after the other), the
mean mass and the kept ratios (kept pairs over candidate pairs) are tabulated; per head the combination
of least ``cost = kept_final + round1_weight * sum(kept after each earlier round)`` whose mean mass
reaches the budget is chosen. Assumption behind the weight: a survivor of round 1 costs round 2's
low-bit pass, about a quarter (0.25) of what its INT16 attention costs a survivor of the last round; round
1 itself runs over every candidate whatever the thresholds, so it does not enter the cost. A head no
combination satisfies keeps everything (alpha -1, or the widest gap, which keeps every key whose
estimated logit is within GAP_MAX of the row's best) and is flagged.

The last round of every combination is tabulated without materialising its kept sets: each row's keys
are sorted once by the last round's score, so the keys reaching a threshold theta are a suffix of the
row, found for all grid values at once by one ``searchsorted``; the suffix's mass and count are
differences of prefix sums of the survivors' probabilities. Earlier rounds are enumerated over the grid.
Cost per sample is about ``10 * G**(R-1)`` passes over its [B, H, Sq, Sk] scores (G grid values,
R rounds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .isa.errors import EnergonError
from .isa.numerics import (
    DEFAULT_BITS,
    GAP_MAX,
    MASK_THRESHOLD,
    RULE_RANGE,
    VIEW_RULES,
    FilterRound,
    MPMRFParams,
)
from .mpmrf import from_fixed, head_fixed, int16_codes, round_scores, row_threshold, to_fixed, unit_scale

__all__ = ["ALPHA_GRID", "GAP_GRID", "KEEP_ALL", "AttentionSample", "Calibration", "CalibrationError",
           "GridTables", "SiteQuality", "SiteThresholds", "ThresholdsError", "calibrate", "evaluate",
           "grid_tables", "kept_sets"]

FORMAT, VERSION = "energon-thresholds", 1
#: the value of each rule that keeps every candidate (the gap's keeps every key within GAP_MAX logits)
KEEP_ALL = {"mpmrf": -1.0, "gap": GAP_MAX}
#: gap grid in logits: geometric from 0.5 to 24 on the 1/16-logit grid, then keep-all
GAP_GRID = tuple(sorted({float(v) for v in np.rint(np.geomspace(0.5, 24.0, 18) * 16) / 16})) + (GAP_MAX,)
#: alpha grid: 1 (keep only the row max) down to -1 (keep all) in steps of 1/8
ALPHA_GRID = tuple(k / 8 for k in range(8, -9, -1))
DEFAULT_GRID = {"gap": GAP_GRID, "mpmrf": ALPHA_GRID}
#: the rules calibration searches: those whose threshold follows from running row statistics (the
#: ranking rules, top-k and Sanger's, are set by their one knob: docs/policies.md)
CALIBRATED_RULES = tuple(DEFAULT_GRID)
#: the default quality budget, from evidence (docs/accuracy.md): the loosest budget of those measured
#: (0.8, 0.9, 0.95) whose calibrated setting stays within 0.5 accuracy points / 0.01 Spearman of float
#: attention on every model and task measured (0.9 loses 0.015 Spearman on all-mpnet-base-v2's tweets)
DEFAULT_BUDGET = 0.95
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_ROW_STRIDE = 1 << 33  # > the span of INT32 scores: rows' sorted keys never interleave in one flat array


class CalibrationError(EnergonError, ValueError):
    """Calibration samples or arguments that cannot be calibrated (bad shapes, budget out of range, ...)."""


class ThresholdsError(EnergonError, ValueError):
    """A thresholds record (``energon-thresholds`` dict) with a missing, ill-typed or out-of-range field."""


@dataclass(frozen=True, eq=False)
class AttentionSample:
    """What one attention site computed on one calibration input: q [B, H, Sq, D], k and v [B, H, Sk, D]
    (float), an additive mask broadcastable to [B, H, Sq, Sk] (entries <= MASK_THRESHOLD are masked out)
    or None, and the logit scale (None: 1/sqrt(D))."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None = None
    scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("q", "k", "v"):
            x = getattr(self, name)
            if not isinstance(x, np.ndarray) or x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
                raise CalibrationError(f"sample {name} must be a 4-d float array [B, H, S, D]; got "
                                       f"{type(x).__name__} {getattr(x, 'dtype', '')} {np.shape(x)}")
            if not np.all(np.isfinite(x)):
                raise CalibrationError(f"sample {name} {x.shape} contains NaN or infinite values")
        b, h, sq, d = self.q.shape
        if self.k.shape[:2] != (b, h) or self.k.shape[3] != d or self.v.shape != self.k.shape:
            raise CalibrationError(f"sample k {self.k.shape} / v {self.v.shape} do not match q {self.q.shape} "
                                   f"(B, H and D must agree, v must equal k)")
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, np.ndarray) or m.ndim > 4 or not np.issubdtype(m.dtype, np.floating) \
                    or np.any(np.isnan(m)):
                raise CalibrationError(f"sample mask must be a float array of at most 4 dims without NaN; got "
                                       f"{type(m).__name__} {getattr(m, 'dtype', '')} {np.shape(m)}")
            try:
                np.broadcast_shapes(m.shape, self.logits_shape)
            except ValueError:
                raise CalibrationError(f"sample mask {m.shape} does not broadcast to [B, H, Sq, Sk] = "
                                       f"{list(self.logits_shape)}") from None
        if self.scale is not None and (isinstance(self.scale, bool)
                                       or not isinstance(self.scale, (int, float, np.integer, np.floating))
                                       or not math.isfinite(self.scale) or self.scale <= 0):
            raise CalibrationError(f"sample scale = {self.scale!r} must be a positive finite number or None")

    @property
    def heads(self) -> int:
        return self.q.shape[1]

    @property
    def logits_shape(self) -> tuple[int, int, int, int]:
        b, h, sq, _ = self.q.shape
        return b, h, sq, self.k.shape[2]

    @property
    def effective_scale(self) -> float:
        return 1.0 / math.sqrt(self.q.shape[3]) if self.scale is None else float(self.scale)


@dataclass(frozen=True)
class SiteQuality:
    """Per head of one site: mean and 10th-percentile kept mass over valid rows, valid rows counted,
    and the kept ratio (kept pairs / candidate pairs) after each round, ``kept_ratio[round][head]``."""

    mass_mean: tuple[float, ...]
    mass_p10: tuple[float, ...]
    rows: tuple[int, ...]
    kept_ratio: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class SiteThresholds:
    """The thresholds chosen for one attention site: ``values[round][head]`` (alpha or gap, exactly on the
    threshold unit's fixed-point grid), the quality they reach on the calibration samples, and the heads
    no grid combination brought to the budget (they keep every key)."""

    name: str
    heads: int
    values: tuple[tuple[float, ...], ...]
    quality: SiteQuality
    flagged: tuple[int, ...] = ()


@dataclass(frozen=True)
class Calibration:
    """Calibrated thresholds of every site, and the settings they were calibrated under."""

    rule: str
    bits: tuple[tuple[int, int], ...]
    budget: float
    view: str
    round1_weight: float
    sites: tuple[SiteThresholds, ...]

    def site(self, name: str) -> SiteThresholds:
        for s in self.sites:
            if s.name == name:
                return s
        raise CalibrationError(f"no calibrated site {name!r}; the calibration has "
                               f"{', '.join(repr(s.name) for s in self.sites) or 'none'}")

    def params_for(self, site: str) -> MPMRFParams:
        """MP-MRF parameters of ``site``: every round with its per-head values and, as the round's own
        value, the median head's (the lower middle one for an even head count: a value some head has)."""
        s = self.site(site)
        rounds = tuple(FilterRound(qb, kb, rule=self.rule).with_head_values(values)
                       for (qb, kb), values in zip(self.bits, s.values))
        return MPMRFParams(rounds, self.view)

    def to_dict(self) -> dict:
        """The JSON-able record (``format`` energon-thresholds, ``version`` 1)."""
        return {"format": FORMAT, "version": VERSION, "rule": self.rule, "bits": [list(b) for b in self.bits],
                "budget": self.budget, "view": self.view, "round1_weight": self.round1_weight,
                "sites": [{"name": s.name, "heads": s.heads, "values": [list(v) for v in s.values],
                           "mass_mean": list(s.quality.mass_mean), "mass_p10": list(s.quality.mass_p10),
                           "rows": list(s.quality.rows), "kept_ratio": [list(r) for r in s.quality.kept_ratio],
                           "flagged": list(s.flagged)} for s in self.sites]}

    @classmethod
    def from_dict(cls, d) -> Calibration:
        """Read :meth:`to_dict`'s record, checking every field; raises :class:`ThresholdsError` naming the
        field path, the value seen and the limit."""
        _keys(d, "", ("format", "version", "rule", "bits", "budget", "view", "round1_weight", "sites"))
        if d["format"] != FORMAT:
            _fail("format", d["format"], f"must be {FORMAT!r}")
        if isinstance(d["version"], bool) or d["version"] != VERSION:
            _fail("version", d["version"], f"must be {VERSION} (the only version this reader knows)")
        rule = _choice(d["rule"], "rule", CALIBRATED_RULES, ThresholdsError)
        bits = _bits(d["bits"], "bits", ThresholdsError)
        budget = _number(d["budget"], "budget", 0.0, 1.0, ThresholdsError, low_open=True)
        view = _choice(d["view"], "view", VIEW_RULES, ThresholdsError)
        weight = _number(d["round1_weight"], "round1_weight", 0.0, math.inf, ThresholdsError)
        if not isinstance(d["sites"], list):
            _fail("sites", d["sites"], "must be a list of site records")
        sites, names = [], set()
        for i, sd in enumerate(d["sites"]):
            site = _site_from_dict(sd, f"sites[{i}]", rule, len(bits))
            if site.name in names:
                _fail(f"sites[{i}].name", site.name, "must be unique: an earlier site has the same name")
            names.add(site.name)
            sites.append(site)
        return cls(rule, bits, budget, view, weight, tuple(sites))


@dataclass(frozen=True)
class GridTables:
    """One site's statistics for every combination of grid values (one index per round, then the head):
    ``mass[g1, ..., gR, h]`` the summed kept mass of valid rows, ``kept[r][g1, ..., g(r+1), h]`` the kept
    pairs after round r, ``rows[h]`` the valid rows and ``candidates[h]`` the candidate pairs."""

    grid: tuple[float, ...]
    mass: np.ndarray
    kept: tuple[np.ndarray, ...]
    rows: np.ndarray
    candidates: np.ndarray

    def mean_mass(self) -> np.ndarray:
        return self.mass / np.maximum(self.rows, 1)

    def kept_ratio(self, round_index: int) -> np.ndarray:
        return self.kept[round_index] / np.maximum(self.candidates, 1)


# --------------------------------------------------------------------------------------------------------
# the measure and the kept sets, as mpmrf_attention computes them

@dataclass(frozen=True)
class _Prepared:
    """One sample in the rounds' integer domains: scores and score units per round, candidates, float
    probabilities (0 off the candidates) and valid rows."""

    scores: tuple[np.ndarray, ...]
    units: tuple[np.ndarray, ...]
    cand: np.ndarray
    prob: np.ndarray
    valid: np.ndarray


def _prepare(sample: AttentionSample, rounds: Sequence[FilterRound], view: str) -> _Prepared:
    shape = sample.logits_shape
    mask = np.zeros((1, 1, 1, 1)) if sample.mask is None else sample.mask
    bias = np.broadcast_to(np.asarray(mask, np.float64).reshape((1,) * (4 - np.ndim(mask)) + np.shape(mask)),
                           shape)
    cand = bias > MASK_THRESHOLD
    bias = np.where(cand, bias, 0.0)
    scale = sample.effective_scale
    q16, sq = int16_codes(sample.q)
    k16, sk = int16_codes(sample.k)
    qk_scale = sq * sk * scale
    scores = tuple(round_scores(q16, k16, bias, qk_scale, r, view) for r in rounds)
    units = tuple(unit_scale(qk_scale, r) for r in rounds)
    logits = np.matmul(sample.q.astype(np.float64), np.swapaxes(sample.k.astype(np.float64), -1, -2)) * scale
    logits = np.where(cand, logits + bias, -np.inf)
    valid = cand.any(axis=-1)
    row_max = np.where(valid, logits.max(axis=-1), 0.0)[..., None]
    p = np.exp(logits - row_max)
    prob = p / np.where(valid, p.sum(axis=-1), 1.0)[..., None]
    return _Prepared(scores, units, cand, prob, valid)


def _kept(prep: _Prepared, rounds: Sequence[FilterRound]) -> tuple[np.ndarray, ...]:
    heads = prep.cand.shape[1]
    keep, out = prep.cand, []
    for r, s, unit in zip(rounds, prep.scores, prep.units):
        keep = keep & (s >= row_threshold(s, keep, r.rule, head_fixed(r.rule, r.values(heads)), unit))
        out.append(keep)
    return tuple(out)


def kept_sets(sample: AttentionSample, params: MPMRFParams) -> tuple[np.ndarray, ...]:
    """The kept mask [B, H, Sq, Sk] after every round of ``params`` on ``sample`` (``mpmrf_attention``'s
    ``kept``)."""
    return _kept(_prepare(sample, params.rounds, params.view), params.rounds)


def _check_heads(samples: Sequence[AttentionSample], where: str) -> int:
    if isinstance(samples, (str, bytes)) or not isinstance(samples, Sequence) or not samples:
        raise CalibrationError(f"site {where!r}: samples must be a non-empty sequence of AttentionSample; "
                               f"got {type(samples).__name__}")
    for i, s in enumerate(samples):
        if not isinstance(s, AttentionSample):
            raise CalibrationError(f"site {where!r} sample {i} is a {type(s).__name__}, not an AttentionSample")
        if s.heads != samples[0].heads:
            raise CalibrationError(f"site {where!r} sample {i} has {s.heads} heads; sample 0 has "
                                   f"{samples[0].heads}")
    return samples[0].heads


def _quality(preps_kept, heads: int) -> SiteQuality:
    """Quality of the kept sets [(prepared sample, kept per round), ...] of one site."""
    masses = [[] for _ in range(heads)]
    kept = None
    cands = np.zeros(heads)
    for prep, kept_rounds in preps_kept:
        row_mass = np.clip(np.sum(prep.prob * kept_rounds[-1], axis=-1), 0.0, 1.0)  # [B, H, Sq]
        for h in range(heads):
            masses[h].append(row_mass[:, h][prep.valid[:, h]])
        counts = np.array([k.sum(axis=(0, 2, 3)) for k in kept_rounds], np.float64)
        kept = counts if kept is None else kept + counts
        cands += prep.cand.sum(axis=(0, 2, 3))
    masses = [np.concatenate(m) for m in masses]
    ratio = np.where(cands > 0, kept / np.maximum(cands, 1), 1.0)
    return SiteQuality(
        mass_mean=tuple(float(m.mean()) if m.size else 1.0 for m in masses),
        mass_p10=tuple(float(np.percentile(m, 10)) if m.size else 1.0 for m in masses),
        rows=tuple(int(m.size) for m in masses),
        kept_ratio=tuple(tuple(float(x) for x in r) for r in ratio))


# --------------------------------------------------------------------------------------------------------
# the grid search

def _sorted_by_last_round(prep: _Prepared) -> _Prepared:
    order = np.argsort(prep.scores[-1], axis=-1, kind="stable")
    take = lambda x: np.take_along_axis(x, order, axis=-1)  # noqa: E731
    return _Prepared(tuple(take(s) for s in prep.scores), prep.units, take(prep.cand), take(prep.prob),
                     prep.valid)


def _accumulate_sample(prep: _Prepared, rule: str, grid_fixed: np.ndarray, tables: GridTables) -> None:
    """Add one sample's statistics to ``tables`` (arrays updated in place; they are local to the search)."""
    sp = _sorted_by_last_round(prep)
    b, h, sq, sk = sp.cand.shape
    n_rounds, g = len(sp.scores), grid_fixed.size
    fixed = grid_fixed.reshape(g, 1, 1, 1, 1)
    row = np.arange(b * h * sq, dtype=np.int64).reshape(b, h, sq)
    last = sp.scores[-1]
    flat_keys = ((last - _INT32_MIN) + (row * _ROW_STRIDE)[..., None]).ravel()
    # prefix sums of the survivors' probabilities and counts in score order; column 0 stays 0
    mass_prefix, count_prefix = np.zeros((b, h, sq, sk + 1)), np.zeros((b, h, sq, sk + 1), np.int32)
    weight = np.empty((b, h, sq, sk))

    # theta is monotonic in the fixed value (falls with the gap, rises with alpha): in this order every
    # row's thresholds ascend, so the flattened queries are sorted and searchsorted walks forwards
    by_theta = np.argsort(-grid_fixed if rule == "gap" else grid_fixed, kind="stable")
    fixed_by_theta = grid_fixed[by_theta].reshape(1, 1, 1, g)

    def last_round(keep, idx):
        theta = row_threshold(last, keep, rule, fixed_by_theta, sp.units[-1])  # [B, H, Sq, G]
        query = (np.clip(theta, _INT32_MIN, _INT32_MAX + 1) - _INT32_MIN) + (row * _ROW_STRIDE)[..., None]
        at = np.searchsorted(flat_keys, query.ravel(), side="left").reshape(query.shape) + row[..., None]
        np.multiply(sp.prob, keep, out=weight)
        np.cumsum(weight, axis=-1, out=mass_prefix[..., 1:])
        np.cumsum(keep, axis=-1, out=count_prefix[..., 1:])
        # rows without candidates have zero probabilities: they add nothing to the mass
        mass = mass_prefix[..., -1:] - mass_prefix.reshape(-1)[at]
        count = count_prefix[..., -1:] - count_prefix.reshape(-1)[at]
        tables.mass[idx + (by_theta,)] += mass.sum(axis=(0, 2)).T
        tables.kept[-1][idx + (by_theta,)] += count.sum(axis=(0, 2)).T

    def walk(r, keep, idx):
        if r == n_rounds - 1:
            last_round(keep, idx)
            return
        s = sp.scores[r]
        theta = row_threshold(s, keep, rule, fixed, sp.units[r])
        for i in range(g):
            kept = keep & (s >= theta[i])
            tables.kept[r][idx + (i,)] += kept.sum(axis=(0, 2, 3))
            walk(r + 1, kept, idx + (i,))

    walk(0, sp.cand, ())
    tables.rows[...] += sp.valid.sum(axis=(0, 2))
    tables.candidates[...] += sp.cand.sum(axis=(0, 2, 3))


def grid_tables(samples: Sequence[AttentionSample], *, rule: str = "gap", bits=DEFAULT_BITS,
                grid: Sequence[float] | None = None, view: str = "msb", progress_bar=None) -> GridTables:
    """Statistics of one site's ``samples`` for every combination of one value of ``grid`` (default
    :data:`GAP_GRID` / :data:`ALPHA_GRID`) per round of ``bits`` under ``rule``, all heads at once."""
    rule, bits, view = _choice(rule, "rule", CALIBRATED_RULES, CalibrationError), \
        _bits(bits, "bits", CalibrationError), _choice(view, "view", VIEW_RULES, CalibrationError)
    grid = _grid(rule, grid)
    heads = _check_heads(samples, "samples")
    rounds = tuple(FilterRound(qb, kb, rule=rule) for qb, kb in bits)
    g, n_rounds = len(grid), len(bits)
    tables = GridTables(grid, np.zeros((g,) * n_rounds + (heads,)),
                        tuple(np.zeros((g,) * (r + 1) + (heads,)) for r in range(n_rounds)),
                        np.zeros(heads), np.zeros(heads))
    grid_fixed = np.array([to_fixed(rule, v) for v in grid], np.int64)
    for sample in samples:
        _accumulate_sample(_prepare(sample, rounds, view), rule, grid_fixed, tables)
        if progress_bar is not None:
            progress_bar.update(1)
    return tables


def _choose(tables: GridTables, budget: float, round1_weight: float):
    """Per head: the grid index per round of least cost among the combinations reaching ``budget``, or
    None when none does."""
    n_rounds, heads = tables.mass.ndim - 1, tables.mass.shape[-1]
    full = tables.mass.shape
    cost = tables.kept_ratio(n_rounds - 1).copy()
    for r in range(n_rounds - 1):
        cost = cost + round1_weight * np.broadcast_to(
            tables.kept_ratio(r).reshape(tables.kept[r].shape[:-1] + (1,) * (n_rounds - 1 - r) + (heads,)), full)
    mass = tables.mean_mass()
    feasible = mass >= budget
    choice = []
    for h in range(heads):
        if tables.rows[h] == 0 or not feasible[..., h].any():
            choice.append(None)
            continue
        c = np.where(feasible[..., h], cost[..., h], np.inf).ravel()
        order = np.lexsort((np.arange(c.size), -mass[..., h].ravel(), c))
        choice.append(np.unravel_index(order[0], full[:-1]))
    return choice


def calibrate(samples: Mapping[str, Sequence[AttentionSample]], *, rule: str = "gap", bits=DEFAULT_BITS,
              budget: float = DEFAULT_BUDGET, view: str = "msb", round1_weight: float = 0.25, progress=None,
              grid: Sequence[float] | None = None) -> Calibration:
    """Per site and head, the threshold value of every round of least cost whose mean kept mass over the
    site's ``samples`` reaches ``budget`` (module docstring). ``progress``: a tqdm bar over the samples when
    truthy (a string is its description). ``grid``: the threshold values searched (default by rule)."""
    rule = _choice(rule, "rule", CALIBRATED_RULES, CalibrationError)
    bits = _bits(bits, "bits", CalibrationError)
    budget = _number(budget, "budget", 0.0, 1.0, CalibrationError, low_open=True)
    view = _choice(view, "view", VIEW_RULES, CalibrationError)
    round1_weight = _number(round1_weight, "round1_weight", 0.0, math.inf, CalibrationError)
    if not isinstance(samples, Mapping) or not samples:
        raise CalibrationError(f"samples must be a non-empty mapping of site name to samples; got "
                               f"{type(samples).__name__} {samples!r:.60}")
    for name, site_samples in samples.items():
        if not isinstance(name, str) or not name:
            raise CalibrationError(f"site name {name!r} must be a non-empty string")
        _check_heads(site_samples, name)
    grid = _grid(rule, grid)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(s) for s in samples.values()),
                   desc=progress if isinstance(progress, str) else "calibrating", unit="sample")
    try:
        sites = tuple(_calibrate_site(name, site_samples, rule, bits, budget, view, round1_weight, grid, bar)
                      for name, site_samples in samples.items())
    finally:
        if bar is not None:
            bar.close()
    return Calibration(rule, bits, budget, view, round1_weight, sites)


def _calibrate_site(name, samples, rule, bits, budget, view, round1_weight, grid, bar) -> SiteThresholds:
    tables = grid_tables(samples, rule=rule, bits=bits, grid=grid, view=view, progress_bar=bar)
    heads = tables.rows.size
    choice = _choose(tables, budget, round1_weight)
    values = tuple(tuple(KEEP_ALL[rule] if c is None else grid[c[r]] for c in choice) for r in range(len(bits)))
    flagged = tuple(h for h, c in enumerate(choice) if c is None)
    site = SiteThresholds(name, heads, values, SiteQuality((), (), (), ()), flagged)
    quality = evaluate(Calibration(rule, bits, budget, view, round1_weight, (site,)), {name: samples})[name]
    return SiteThresholds(name, heads, values, quality, flagged)


def evaluate(calibration: Calibration, samples: Mapping[str, Sequence[AttentionSample]]) -> dict[str, SiteQuality]:
    """Quality (mass and kept ratios per head) of ``calibration``'s thresholds on ``samples``, by site:
    the check on held-out samples."""
    if not isinstance(samples, Mapping):
        raise CalibrationError(f"samples must be a mapping of site name to samples; got {type(samples).__name__}")
    out = {}
    for name, site_samples in samples.items():
        site = calibration.site(name)
        heads = _check_heads(site_samples, name)
        if heads != site.heads:
            raise CalibrationError(f"site {name!r} samples have {heads} heads; it was calibrated for {site.heads}")
        params = calibration.params_for(name)
        preps = (_prepare(s, params.rounds, params.view) for s in site_samples)
        out[name] = _quality(((p, _kept(p, params.rounds)) for p in preps), heads)
    return out


# --------------------------------------------------------------------------------------------------------
# checks shared by the arguments of calibrate and the fields of a thresholds record

def _fail(path: str, value, limit: str, err=ThresholdsError):
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    raise err(f"thresholds {path} = {text} {limit}")


def _is_number(x) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(x)


def _number(x, path, lo, hi, err, low_open=False) -> float:
    if not _is_number(x) or not (lo < x if low_open else lo <= x) or not x <= hi:
        _fail(path, x, f"must be a finite number in {'(' if low_open else '['}{lo:g}, {hi:g}]", err)
    return float(x)


def _integer(x, path, lo, hi, err) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or not lo <= x <= hi:
        _fail(path, x, f"must be an integer in {lo}..{hi}", err)
    return int(x)


def _choice(x, path, options, err) -> str:
    if not isinstance(x, str) or x not in options:
        _fail(path, x, f"must be one of {', '.join(options)}", err)
    return x


def _bits(x, path, err) -> tuple[tuple[int, int], ...]:
    if isinstance(x, (str, bytes)) or not isinstance(x, (list, tuple)) or not x:
        _fail(path, x, "must be a non-empty list of [q_bits, k_bits] pairs", err)
    out = []
    for i, pair in enumerate(x):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            _fail(f"{path}[{i}]", pair, "must be a [q_bits, k_bits] pair", err)
        qb, kb = (_integer(v, f"{path}[{i}][{j}]", 1, 16, err) for j, v in enumerate(pair))
        if out and (qb < out[-1][0] or kb < out[-1][1]):
            _fail(f"{path}[{i}]", list(pair), f"must not have fewer bits than {path}[{i - 1}] = {list(out[-1])}",
                  err)
        out.append((qb, kb))
    return tuple(out)


def _grid(rule: str, grid) -> tuple[float, ...]:
    grid = DEFAULT_GRID[rule] if grid is None else tuple(grid)
    if not grid:
        _fail("grid", grid, "must hold at least one threshold value", CalibrationError)
    for i, v in enumerate(grid):
        _value(v, f"grid[{i}]", rule, CalibrationError)
    return tuple(dict.fromkeys(float(v) for v in grid))


def _value(x, path, rule, err) -> float:
    lo, hi = RULE_RANGE[rule]
    x = _number(x, path, lo, hi, err)
    if from_fixed(rule, to_fixed(rule, x)) != x:
        _fail(path, x, f"is not on the {rule} threshold unit's fixed-point grid (the nearest is "
                       f"{from_fixed(rule, to_fixed(rule, x))!r})", err)
    return x


def _keys(d, path, keys) -> None:
    where = path or "record"
    if not isinstance(d, dict):
        _fail(where, d, f"must be a dict with keys {', '.join(keys)}")
    for k in keys:
        if k not in d:
            _fail(f"{path}.{k}" if path else k, None, "is missing")
    extra = sorted(set(d) - set(keys), key=str)
    if extra:
        _fail(f"{path}.{extra[0]}" if path else str(extra[0]), d[extra[0]],
              f"is not a field (known: {', '.join(keys)})")


def _list(x, path, n, what) -> list:
    if not isinstance(x, list) or len(x) != n:
        _fail(path, x, f"must be a list of {n} {what}")
    return x


def _site_from_dict(sd, path, rule, n_rounds) -> SiteThresholds:
    _keys(sd, path, ("name", "heads", "values", "mass_mean", "mass_p10", "rows", "kept_ratio", "flagged"))
    name = sd["name"]
    if not isinstance(name, str) or not name:
        _fail(f"{path}.name", name, "must be a non-empty string")
    heads = _integer(sd["heads"], f"{path}.heads", 1, 1 << 16, ThresholdsError)
    values = tuple(
        tuple(_value(v, f"{path}.values[{r}][{h}]", rule, ThresholdsError)
              for h, v in enumerate(_list(vr, f"{path}.values[{r}]", heads, "values (one per head)")))
        for r, vr in enumerate(_list(sd["values"], f"{path}.values", n_rounds, "rounds of per-head values")))
    masses = {key: tuple(_number(m, f"{path}.{key}[{h}]", 0.0, 1.0, ThresholdsError)
                         for h, m in enumerate(_list(sd[key], f"{path}.{key}", heads, "masses (one per head)")))
              for key in ("mass_mean", "mass_p10")}
    rows = tuple(_integer(n, f"{path}.rows[{h}]", 0, 1 << 62, ThresholdsError)
                 for h, n in enumerate(_list(sd["rows"], f"{path}.rows", heads, "row counts (one per head)")))
    kept = []
    for r, kr in enumerate(_list(sd["kept_ratio"], f"{path}.kept_ratio", n_rounds, "rounds of kept ratios")):
        ratios = []
        for h, x in enumerate(_list(kr, f"{path}.kept_ratio[{r}]", heads, "kept ratios (one per head)")):
            top = kept[-1][h] if kept else 1.0
            ratios.append(_number(x, f"{path}.kept_ratio[{r}][{h}]", 0.0, top, ThresholdsError))
        kept.append(tuple(ratios))
    flagged = sd["flagged"]
    if not isinstance(flagged, list):
        _fail(f"{path}.flagged", flagged, "must be a list of head indices")
    for i, f in enumerate(flagged):
        _integer(f, f"{path}.flagged[{i}]", flagged[i - 1] + 1 if i else 0, heads - 1, ThresholdsError)
    quality = SiteQuality(masses["mass_mean"], masses["mass_p10"], rows, tuple(kept))
    return SiteThresholds(name, heads, values, quality, tuple(int(f) for f in flagged))
