"""Tuners: which points of a search space to measure next, given what has been measured.

All share one interface (AutoTVM's): :meth:`Tuner.next_batch` proposes up to ``n`` unmeasured points
(indices into the space), :meth:`Tuner.update` reports their results. Every random choice comes from
the tuner's own seeded generator and results arrive in proposal order, so a session is a pure
function of (space, seed, measurements).

* :class:`GridTuner` walks the space in grid order.
* :class:`RandomTuner` walks a seeded permutation of it.
* :class:`XGBTuner` fits an XGBoost regressor of log2(objective: cycles, energy or EDP) on the schedule
  features of every measured point, and each batch takes the best-predicted unmeasured points plus a share of random
  ones (epsilon-greedy exploration) and a diversity filter, then refits: AutoTVM's ``XGBTuner`` with
  exhaustive prediction in place of simulated annealing, which our spaces (at most a few ten
  thousand points) make affordable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .errors import TuningError
from .features import schedule_features
from .measure import MeasureResult
from .space import KNOBS, SearchSpace


class Tuner:
    """Base class: tracks which points were measured and what they gave."""

    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.visited = np.zeros(len(space), dtype=bool)
        self.measured: list[tuple[int, MeasureResult]] = []

    def has_next(self) -> bool:
        return not self.visited.all()

    def next_batch(self, n: int) -> list[int]:
        """Up to ``n`` unmeasured points to measure next (fewer only when the space runs out)."""
        picks = self._propose(min(n, int((~self.visited).sum())))
        self.visited[picks] = True
        return picks

    def _propose(self, n: int) -> list[int]:
        raise NotImplementedError

    def update(self, indices: Sequence[int], results: Sequence[MeasureResult]) -> None:
        """Results of ``indices`` (proposed here or measured by the caller, e.g. the heuristic)."""
        for i, r in zip(indices, results):
            self.visited[i] = True
            self.measured.append((int(i), r))


class GridTuner(Tuner):
    """Every point in grid order (the space's own order)."""

    name = "grid"

    def _propose(self, n: int) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.visited)[:n]]


class RandomTuner(Tuner):
    """Points in a random order fixed by the seed, without repetition."""

    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0):
        super().__init__(space, seed)
        self.order = self.rng.permutation(len(space))
        self.cursor = 0

    def _propose(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            i = int(self.order[self.cursor])
            self.cursor += 1
            if not self.visited[i]:
                out.append(i)
        return out


class XGBTuner(Tuner):
    """Cost-model-guided search. Until ``min_train`` points are measured it proposes random ones;
    afterwards each batch comes from the model's best-predicted unmeasured points, except that a
    fraction ``explore`` of it (at least one point, for batches of 2 or more) is drawn at random so
    that a wrong model still sees the regions it under-rates.

    ``diversity`` (AutoTVM's ``diversity_filter_ratio``): the exploiting part of a batch of n is
    picked from the ``diversity * n`` best-predicted points, greedily covering as many knob values
    as possible (ties: better prediction first), so that a batch is not n copies of one tiling that
    differ only in a knob that hardly matters. ``diversity=1`` takes the plain top n, which once spent
    a whole BERT-base S=512 (server) session on near-copies of two tilings 1.6x off the best (see
    docs/tuning.md for that case and for where the filter makes no difference)."""

    name = "xgb"

    def __init__(self, space: SearchSpace, seed: int = 0, *, explore: float = 0.2, diversity: float = 8.0,
                 min_train: int = 8, boost_rounds: int = 80, params: dict | None = None):
        super().__init__(space, seed)
        if not 0.0 <= explore <= 1.0:
            raise TuningError(f"explore = {explore!r} must be between 0 and 1")
        if not diversity >= 1.0:
            raise TuningError(f"diversity = {diversity!r} must be at least 1")
        self.explore = explore
        self.diversity = diversity
        self.knob_values = [tuple((k, getattr(s, k)) for k in KNOBS) for s in space.points]
        self.min_train = max(2, min_train)
        self.boost_rounds = boost_rounds
        # one thread and no row/column subsampling: the same data gives the same trees everywhere
        self.params = {"objective": "reg:squarederror", "max_depth": 6, "eta": 0.2, "min_child_weight": 1,
                       "subsample": 1.0, "colsample_bytree": 1.0, "nthread": 1, "seed": seed,
                       "tree_method": "exact", **(params or {})}
        self.features = schedule_features(space)
        self.model = None

    def update(self, indices: Sequence[int], results: Sequence[MeasureResult]) -> None:
        super().update(indices, results)
        self._fit()

    def _fit(self) -> None:
        if len(self.measured) < self.min_train:
            return
        import xgboost as xgb  # lazy: importing xgboost costs ~0.5 s

        good = [math.log2(max(r.score, 1e-300)) for _, r in self.measured if r.ok]
        if not good:
            return
        # an unmeasurable point teaches the model "bad": twice the worst cycles seen
        worst = max(good) + 1.0
        x = self.features[[i for i, _ in self.measured]]
        y = np.array([math.log2(max(r.score, 1e-300)) if r.ok else worst for _, r in self.measured])
        self.model = xgb.train(self.params, xgb.DMatrix(x, label=y), num_boost_round=self.boost_rounds)

    def predict(self) -> np.ndarray:
        """Predicted log2(objective) of every point of the space (requires a fitted model)."""
        import xgboost as xgb

        return self.model.predict(xgb.DMatrix(self.features))

    def _propose(self, n: int) -> list[int]:
        free = np.flatnonzero(~self.visited)
        if self.model is None:
            return [int(i) for i in self.rng.choice(free, size=n, replace=False)]
        n_random = min(n, max(1 if n >= 2 else 0, round(self.explore * n)))
        pred = self.predict()[free]
        order = free[np.argsort(pred, kind="stable")]  # ties: grid order
        pool = [int(i) for i in order[:max(n - n_random, math.ceil(self.diversity * (n - n_random)))]]
        picks = self._diverse(pool, n - n_random)
        chosen = set(picks)
        rest = np.array([i for i in order if int(i) not in chosen])
        if n_random:
            picks += [int(i) for i in self.rng.choice(rest, size=n_random, replace=False)]
        return picks

    def _diverse(self, pool: list[int], n: int) -> list[int]:
        """Greedy max coverage of (knob, value) pairs over ``pool`` (best-predicted first)."""
        picks: list[int] = []
        covered: set = set()
        left = list(pool)
        while len(picks) < n and left:
            gains = [len(set(self.knob_values[i]) - covered) for i in left]
            j = int(np.argmax(gains))  # first of the maximal gains: the better-predicted
            picks.append(left.pop(j))
            covered.update(self.knob_values[picks[-1]])
        return picks


TUNERS = {"xgb": XGBTuner, "random": RandomTuner, "grid": GridTuner}


def make_tuner(name: str, space: SearchSpace, seed: int = 0, **options) -> Tuner:
    """The tuner called ``name`` (``xgb``, ``random`` or ``grid``) over ``space``."""
    cls = TUNERS.get(name)
    if cls is None:
        raise TuningError(f"unknown tuner {name!r}; tuners are {', '.join(TUNERS)}")
    return cls(space, seed, **options)
