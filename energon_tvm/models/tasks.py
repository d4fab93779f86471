"""The labelled tasks accuracy is measured on: corpus, target, head, split and metric, with standard errors.

Each :class:`TaskSpec` of :data:`TASKS` names a VADER corpus (:mod:`.corpus`), what is predicted from a
sentence embedding (the polarity of the mean human score, or the score itself) and how the prediction is
scored (accuracy, or Spearman's rank correlation with the human score). The protocol:

* the task's pool is its corpus' rows (for polarity, only those outside the neutral band), one per
  distinct text: a text rated twice (2 movie, 10 Amazon and 71 NYT snippets) keeps its first row, so
  the same sentence never sits in both train and test;
* a fixed-seed permutation of the pool gives ``n_train`` train rows and then ``n_test`` test rows (all
  the rest if ``n_test`` is None), test in permuted order so any prefix of it is a random sample too;
* the head is fit once, on float-attention embeddings of the train part (:func:`fit_head`), and every
  attention setting is scored on the same test items (:func:`evaluate`), so differences between settings
  are paired (:func:`paired_difference`).

Standard errors: accuracy's is binomial, ``sqrt(p (1 - p) / n)``, and the paired difference's is the SE
of the mean of per-item differences of correctness. Spearman's is bootstrapped over test items
(:data:`BOOTSTRAP_RESAMPLES` resamples drawn from :data:`BOOTSTRAP_SEED`, so the same items on every call)
rather than taken from the Fisher z approximation, which assumes a bivariate normal the heavily tied,
bounded human means are not; the paired difference uses the same resamples for both scores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..isa.errors import EnergonError
from . import corpus, probe

ACCURACY, SPEARMAN = "accuracy", "spearman"
LOGISTIC, RIDGE = "logistic", "ridge"
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
#: resamples ranked at once: bounds the bootstrap's memory to a few MB per array at 4,000 items
_BOOTSTRAP_CHUNK = 100
#: ridge penalties the head's leave-one-out cross-validation on the train part chooses from
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 13))


class TaskError(EnergonError, ValueError):
    """A task name, split, head input or pair of scores that the protocol cannot take."""


@dataclass(frozen=True)
class TaskSpec:
    """One labelled task. ``neutral_band`` is None for a score target (every row of the corpus), else
    the band around 0 whose rows are dropped and whose outside is labelled by sign."""

    name: str
    corpus: str
    metric: str
    head: str
    n_train: int
    n_test: int | None
    neutral_band: float | None
    description: str


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("movies-polarity", "movies", ACCURACY, LOGISTIC, 2000, 4000, corpus.NEUTRAL_BAND,
             "positive or negative movie-review snippet (|score| >= 0.5)"),
    TaskSpec("tweets-intensity", "tweets", SPEARMAN, RIDGE, 1200, None, None,
             "mean human sentiment score of a tweet, ranked"),
    TaskSpec("amazon-polarity", "amazon", ACCURACY, LOGISTIC, 1000, None, corpus.NEUTRAL_BAND,
             "positive or negative Amazon review snippet (|score| >= 0.5)"),
    TaskSpec("nyt-intensity", "nyt", SPEARMAN, RIDGE, 1200, None, None,
             "mean human sentiment score of a New York Times editorial snippet, ranked"),
)}


def task_spec(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise TaskError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}") from None


@dataclass(frozen=True, eq=False)
class TaskData:
    """A task's split: texts, targets (int64 labels or float64 scores) and the corpus rows they came from."""

    spec: TaskSpec
    seed: int
    train_rows: np.ndarray
    test_rows: np.ndarray
    train_texts: tuple[str, ...]
    train_targets: np.ndarray
    test_texts: tuple[str, ...]
    test_targets: np.ndarray


def pool_rows(spec: TaskSpec, items: Sequence[tuple[str, float]]) -> np.ndarray:
    """Ascending corpus rows a task draws from: the first row of each distinct text, outside the neutral
    band if the task has one."""
    rows = (np.arange(len(items)) if spec.neutral_band is None else corpus.polar_rows(items, spec.neutral_band))
    _, first = np.unique(np.array([items[r][0] for r in rows], dtype=str), return_index=True)
    return rows[np.sort(first)]


def targets_of(spec: TaskSpec, items: Sequence[tuple[str, float]], rows: np.ndarray) -> np.ndarray:
    if spec.metric == ACCURACY:
        return corpus.labels_of(items, rows)
    return np.array([items[r][1] for r in rows], dtype=np.float64)


def split_task(spec: TaskSpec, items: Sequence[tuple[str, float]], seed: int = 0) -> TaskData:
    """The fixed-seed train/test split of ``items`` (a corpus' rows) for ``spec``."""
    pool = pool_rows(spec, items)
    n_test = len(pool) - spec.n_train if spec.n_test is None else spec.n_test
    if spec.n_train < 2 or n_test < 2 or spec.n_train + n_test > len(pool):
        raise TaskError(f"task {spec.name}: {spec.n_train} train + {n_test} test rows do not fit in its pool of "
                        f"{len(pool)} distinct {'polar ' if spec.neutral_band is not None else ''}rows of "
                        f"corpus {spec.corpus!r} (each part needs >= 2)")
    order = np.random.default_rng(seed).permutation(pool)
    train = np.sort(order[:spec.n_train])
    test = order[spec.n_train:spec.n_train + n_test]
    return TaskData(spec, seed, train, test, tuple(items[r][0] for r in train), targets_of(spec, items, train),
                    tuple(items[r][0] for r in test), targets_of(spec, items, test))


def load_task(name: str, seed: int = 0, cache_dir: str | os.PathLike | None = None) -> TaskData:
    """Task ``name``'s split of its VADER corpus (fetched and verified by :mod:`.corpus`)."""
    spec = task_spec(name)
    return split_task(spec, corpus.fetch_vader_corpus(spec.corpus, cache_dir), seed)


# --- heads ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Head:
    """A linear head ``x . coef + intercept``: a label (``> 0``) for accuracy tasks, a score otherwise."""

    task: str
    metric: str
    coef: np.ndarray
    intercept: float
    metadata: dict = field(default_factory=dict)

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        x = _check_embeddings(embeddings, self.coef.shape[0])
        out = x @ self.coef + self.intercept
        return (out > 0).astype(np.int64) if self.metric == ACCURACY else out


def _check_embeddings(embeddings: np.ndarray, dim: int | None = None) -> np.ndarray:
    try:
        return probe._check_embeddings(embeddings, dim)
    except probe.ProbeError as exc:
        raise TaskError(str(exc)) from None


def _check_targets(spec_metric: str, targets, n: int) -> np.ndarray:
    y = np.asarray(targets)
    if y.shape != (n,):
        raise TaskError(f"targets must be a vector of {n} entries (one per embedding), got shape {y.shape}")
    if spec_metric == ACCURACY:
        if not np.all((y == 0) | (y == 1)):
            raise TaskError(f"accuracy targets must be 0 or 1, got values {np.unique(y)[:10].tolist()}")
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isfinite(y)):
        raise TaskError(f"score targets must be finite numbers, got {y.dtype} with "
                        f"{int(np.sum(~np.isfinite(y))) if np.issubdtype(y.dtype, np.number) else 'non-numeric'} bad")
    return y.astype(np.float64)


def fit_head(spec: TaskSpec, train_embeddings: np.ndarray, train_targets) -> Head:
    """Fit ``spec``'s head once on (float-attention) train embeddings: logistic regression as the probe
    (:func:`.probe.train_probe`, its fixed C), or ridge with the alpha of :data:`RIDGE_ALPHAS` that
    efficient leave-one-out cross-validation on these train rows prefers."""
    x = _check_embeddings(train_embeddings)
    y = _check_targets(spec.metric, train_targets, len(x))
    if spec.head == LOGISTIC:
        try:
            fitted = probe.train_probe(x, y)
        except probe.ProbeError as exc:
            raise TaskError(f"task {spec.name}: {exc}") from None
        return Head(spec.name, spec.metric, fitted.coef, fitted.intercept, dict(fitted.metadata, n_train=len(x)))
    if spec.head == RIDGE:
        from sklearn.linear_model import RidgeCV

        model = RidgeCV(alphas=RIDGE_ALPHAS).fit(x, y)
        return Head(spec.name, spec.metric, model.coef_.astype(np.float64), float(model.intercept_),
                    {"alpha": float(model.alpha_), "alphas": list(RIDGE_ALPHAS), "n_train": len(x),
                     "dim": int(x.shape[1])})
    raise TaskError(f"task {spec.name}: unknown head {spec.head!r}; heads are {LOGISTIC}, {RIDGE}")


# --- scores -----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Score:
    """A head's metric on a test set, its standard error, and the per-item predictions and targets that
    paired comparisons need."""

    name: str
    metric: float
    se: float
    predictions: np.ndarray
    targets: np.ndarray

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties given the mean of the ranks they span (float64)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, axis=-1, kind="stable")
    s = np.take_along_axis(v, order, axis=-1)
    n = v.shape[-1]
    pos = np.broadcast_to(np.arange(n), v.shape)
    starts = np.ones(v.shape, bool)
    starts[..., 1:] = s[..., 1:] != s[..., :-1]
    ends = np.ones(v.shape, bool)
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, n), axis=-1), axis=-1), axis=-1)
    ranks = np.empty_like(v)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=-1)
    return ranks


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return np.sum(a * b, axis=-1) / np.sqrt(np.sum(a * a, axis=-1) * np.sum(b * b, axis=-1))


def spearman(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson of average ranks)."""
    return float(_pearson_rows(average_ranks(predictions), average_ranks(targets)))


def bootstrap_indices(n: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED):
    """The bootstrap's resamples of ``n`` items, ``[resamples, n]`` in chunks (the same on every call)."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, _BOOTSTRAP_CHUNK):
        yield rng.integers(0, n, size=(min(_BOOTSTRAP_CHUNK, resamples - start), n))


def _bootstrap_spearman(targets: np.ndarray, *predictions: np.ndarray) -> list[np.ndarray]:
    """Per resample, Spearman of every one of ``predictions`` with ``targets``, on the same resamples."""
    out = [[] for _ in predictions]
    for idx in bootstrap_indices(len(targets)):
        target_ranks = average_ranks(targets[idx])
        for acc, p in zip(out, predictions):
            acc.append(_pearson_rows(average_ranks(p[idx]), target_ranks))
    return [np.concatenate(a) for a in out]


def evaluate(head: Head, test_embeddings: np.ndarray, test_targets) -> Score:
    """``head``'s metric on the test set with its standard error (see the module docstring)."""
    x = _check_embeddings(test_embeddings, head.coef.shape[0])
    y = _check_targets(head.metric, test_targets, len(x))
    if len(y) < 2:
        raise TaskError(f"a test set needs >= 2 items, got {len(y)}")
    pred = head.predict(x)
    if head.metric == ACCURACY:
        p = float(np.mean(pred == y))
        return Score(ACCURACY, p, float(np.sqrt(p * (1.0 - p) / len(y))), pred, y)
    (boot,) = _bootstrap_spearman(y, pred)
    return Score(SPEARMAN, spearman(pred, y), float(np.std(boot, ddof=1)), pred, y)


def paired_difference(score_a: Score, score_b: Score) -> tuple[float, float]:
    """``score_a - score_b`` on the same test items, with the standard error of that difference."""
    if score_a.name != score_b.name:
        raise TaskError(f"cannot pair a {score_a.name} score with a {score_b.name} score")
    if score_a.n != score_b.n or not np.array_equal(score_a.targets, score_b.targets):
        raise TaskError(f"paired scores must be on the same test items; got {score_a.n} and {score_b.n} items"
                        f"{'' if score_a.n != score_b.n else ' with different targets'}")
    diff = score_a.metric - score_b.metric
    if score_a.name == ACCURACY:
        d = (score_a.predictions == score_a.targets).astype(np.float64) - (score_b.predictions == score_b.targets)
        return float(diff), float(np.std(d, ddof=1) / np.sqrt(len(d)))
    boot_a, boot_b = _bootstrap_spearman(score_a.targets, score_a.predictions, score_b.predictions)
    return float(diff), float(np.std(boot_a - boot_b, ddof=1))
