"""The task head that turns sentence embeddings into a sentiment accuracy.

A logistic-regression probe is trained once, on dense (float attention) embeddings, with a fixed seed
and a fixed stratified split; the same frozen probe then scores embeddings computed with sparse
attention, so any change in accuracy comes from the attention and not from retraining. This module
owns the split, the training (scikit-learn, imported lazily), the probe as a plain record, and its
file format: ``.npz`` with numeric arrays and a JSON metadata string, loaded with
``allow_pickle=False`` (a probe file never carries pickled objects).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..isa.errors import EnergonError

PROBE_FORMAT = "energon-tvm/probe-v1"
SEED = 0
TEST_FRACTION = 0.3
#: Inverse regularisation strength, chosen by 5-fold cross-validation on the *training* split of the
#: 2000-snippet run (seq_len 128): C = 0.1, 0.3, 1, 3, 10, 30, 100 gave 0.762, 0.776, 0.775, 0.771,
#: 0.756, 0.735, 0.724. 0.3 and 1 tie within the folds' noise, so scikit-learn's default stays.
C = 1.0
MAX_ITER = 2000
#: What the train/test indices of a probe trained by ``python -m energon_tvm.models probe`` index.
VADER_ROWS = "rows of energon_tvm.models.corpus.fetch_vader_movie_reviews()"


class ProbeError(EnergonError, ValueError):
    """Embeddings or labels a probe cannot take, or a probe file that is not one."""


@dataclass(frozen=True, eq=False)
class Probe:
    """A binary linear probe: ``label = coef . x + intercept > 0`` (1 = positive sentiment).

    ``train_index`` / ``test_index`` say which examples it was trained and evaluated on (what they
    index is ``metadata["index"]``), so anyone can rebuild its test set exactly.
    """

    coef: np.ndarray
    intercept: float
    metadata: dict = field(default_factory=dict)
    train_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    test_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def dim(self) -> int:
        return int(self.coef.shape[0])

    def decision_function(self, embeddings: np.ndarray) -> np.ndarray:
        x = _check_embeddings(embeddings, self.dim)
        return x @ self.coef + self.intercept

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        return (self.decision_function(embeddings) > 0).astype(np.int64)


def _check_embeddings(embeddings: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(embeddings)
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise ProbeError(f"embeddings must be a 2-D float array [N, D], got {x.dtype} {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ProbeError(f"embeddings have {x.shape[1]} features; the probe was trained on {dim}")
    if not np.all(np.isfinite(x)):
        raise ProbeError(f"embeddings hold {int(np.sum(~np.isfinite(x)))} non-finite value(s)")
    return x.astype(np.float64)


def _check_labels(labels: Sequence[int], n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ProbeError(f"labels must be a vector of {n} entries (one per embedding), got shape {y.shape}")
    if not np.all((y == 0) | (y == 1)):
        raise ProbeError(f"labels must be 0 or 1, got values {np.unique(y)[:10].tolist()}")
    return y.astype(np.int64)


def stratified_split(labels: Sequence[int], test_fraction: float = TEST_FRACTION,
                     seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(train, test)`` into ``labels``, each class split in the same proportion.

    Written on numpy's seeded generator rather than sklearn's splitters so the split depends only on
    the seed and the labels, not on the installed scikit-learn version.
    """
    y = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"test fraction {test_fraction} is outside (0, 1)")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        n_test = int(round(test_fraction * len(members)))
        if n_test == 0 or n_test == len(members):
            raise ProbeError(f"class {cls} has {len(members)} example(s): too few to put some in both train and "
                             f"test at test fraction {test_fraction}")
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def train_probe(embeddings: np.ndarray, labels: Sequence[int], *, C: float = C, seed: int = SEED,
                max_iter: int = MAX_ITER, metadata: dict | None = None) -> Probe:
    """Fit a logistic-regression probe on all of ``embeddings`` (the caller has already split)."""
    from sklearn.linear_model import LogisticRegression

    x = _check_embeddings(embeddings)
    y = _check_labels(labels, len(x))
    if len(np.unique(y)) != 2:
        raise ProbeError(f"training needs both classes; labels hold only {np.unique(y).tolist()}")
    model = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(x, y)
    meta = {"C": C, "seed": seed, "max_iter": max_iter, "n_iter": int(model.n_iter_[0]), "dim": int(x.shape[1])}
    meta.update(metadata or {})
    return Probe(coef=model.coef_[0].astype(np.float64), intercept=float(model.intercept_[0]), metadata=meta)


def accuracy(probe: Probe, embeddings: np.ndarray, labels: Sequence[int]) -> float:
    """Fraction of ``labels`` the probe predicts from ``embeddings``."""
    x = _check_embeddings(embeddings, probe.dim)
    y = _check_labels(labels, len(x))
    if len(y) == 0:
        raise ProbeError("accuracy of an empty set is undefined")
    return float(np.mean(probe.predict(x) == y))


def fit_with_split(embeddings: np.ndarray, labels: Sequence[int], index: Sequence[int] | None = None, *,
                   test_fraction: float = TEST_FRACTION, seed: int = SEED, C: float = C,
                   metadata: dict | None = None) -> Probe:
    """Split stratified, train on the train part, and record both accuracies in the metadata.

    ``index[i]`` names example ``i`` in its dataset (e.g. its corpus row); the probe keeps the train
    and test indices so the test set can be rebuilt. Defaults to positions ``0..N-1``.
    """
    x = _check_embeddings(embeddings)
    y = _check_labels(labels, len(x))
    index = np.arange(len(x)) if index is None else np.asarray(index, dtype=np.int64)
    if index.shape != (len(x),):
        raise ProbeError(f"index must have one entry per embedding ({len(x)}), got shape {index.shape}")
    train, test = stratified_split(y, test_fraction, seed)
    probe = train_probe(x[train], y[train], C=C, seed=seed, metadata=metadata)
    meta = dict(probe.metadata, test_fraction=test_fraction, n_train=int(len(train)), n_test=int(len(test)),
                train_accuracy=accuracy(probe, x[train], y[train]), test_accuracy=accuracy(probe, x[test], y[test]),
                test_positive_fraction=float(y[test].mean()))
    return Probe(coef=probe.coef, intercept=probe.intercept, metadata=meta,
                 train_index=index[train], test_index=index[test])


def save_probe(probe: Probe, path: str | os.PathLike) -> Path:
    """Write ``probe`` as ``.npz`` (numeric arrays plus a JSON metadata string; no pickled objects)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ProbeError(f"probe file name must end in .npz, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, format=np.array(PROBE_FORMAT), coef=probe.coef.astype(np.float64),
             intercept=np.array(probe.intercept, dtype=np.float64),
             metadata=np.array(json.dumps(probe.metadata, sort_keys=True)),
             train_index=np.asarray(probe.train_index, dtype=np.int64),
             test_index=np.asarray(probe.test_index, dtype=np.int64))
    return path


def load_probe(path: str | os.PathLike) -> Probe:
    """Read a probe written by :func:`save_probe`; refuses pickles and files of another format."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as exc:
        raise ProbeError(f"cannot read probe file {str(path)!r}: {exc}") from exc
    required = ("format", "coef", "intercept", "metadata", "train_index", "test_index")
    missing = [name for name in required if name not in arrays]
    if missing:
        raise ProbeError(f"{path} is not a probe file: it lacks {', '.join(missing)}")
    if str(arrays["format"]) != PROBE_FORMAT:
        raise ProbeError(f"{path} has format {str(arrays['format'])!r}; this version reads {PROBE_FORMAT!r}")
    coef = arrays["coef"]
    if coef.ndim != 1 or coef.dtype != np.float64:
        raise ProbeError(f"{path}: coef must be a float64 vector, got {coef.dtype} {coef.shape}")
    try:
        metadata = json.loads(str(arrays["metadata"]))
    except json.JSONDecodeError as exc:
        raise ProbeError(f"{path}: metadata is not JSON: {exc}") from exc
    return Probe(coef=coef, intercept=float(arrays["intercept"]), metadata=metadata,
                 train_index=arrays["train_index"].astype(np.int64), test_index=arrays["test_index"].astype(np.int64))


def probe_test_set(probe: Probe, items: Sequence[tuple[str, float]]) -> tuple[list[str], np.ndarray]:
    """The texts and labels a corpus-trained probe was evaluated on, rebuilt from the corpus items
    (``fetch_vader_movie_reviews()``): evaluate sparse-attention embeddings of these texts."""
    from .corpus import labels_of

    if probe.metadata.get("index") != VADER_ROWS:
        raise ProbeError(f"probe indices are {probe.metadata.get('index')!r}, not {VADER_ROWS!r}")
    if len(probe.test_index) and int(probe.test_index.max()) >= len(items):
        raise ProbeError(f"probe test index {int(probe.test_index.max())} is beyond the corpus' {len(items)} rows")
    return [items[r][0] for r in probe.test_index], labels_of(items, probe.test_index)
