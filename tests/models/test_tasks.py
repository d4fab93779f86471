"""The labelled tasks: the four corpora read from a synthetic sdist, the fixed-seed split, the heads, and
the metrics' standard errors against brute-force and scipy oracles; marked `models`, the real counts."""

import dataclasses
import io
import os
import tarfile

import numpy as np
import pytest
from energon_tvm.isa.errors import EnergonError

from energon_tvm.models import corpus, tasks

stats = pytest.importorskip("scipy.stats")


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


#: per corpus, rows (id, score, text) in the style of its file (tweets and movies number lines, the
#: review and editorial corpora number snippets within documents)
ROWS = {
    "movies": [("1", "2.26666666667", "The Rock is destined ..."), ("2", "-0.6", "Too tepid biopic")],
    "tweets": [("1", "2.726315789", "So lucky."), ("2", "-3.1", "worst day :("), ("3", "0", "ok")],
    "amazon": [("1_1", "-0.9", "no picture."), ("1_2", "3.85", "i love it!")],
    "nyt": [("1_1", "0.4", "On Dec. 19, around noon,"), ("1_2", "-2.8", "It is a disgrace.")],
}


def _sdist(rows=ROWS) -> bytes:
    inner = _tar({f"hutto_ICWSM_2014/{corpus.CORPORA[name].file}":
                  "".join(f"{i}\t{s}\t{t}\r\n" for i, s, t in r).encode() for name, r in rows.items()}
                 | {"hutto_ICWSM_2014/_README_.txt": b"readme"})
    return _tar({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner,
                 "vaderSentiment-3.3.2/setup.py": b""})


@pytest.mark.parametrize("name", sorted(corpus.CORPORA))
def test_each_corpus_parses_from_the_sdist(name):
    assert corpus.read_corpus(_sdist(), name) == [(t, float(s)) for _, s, t in ROWS[name]]


def test_corpus_names_and_files_are_declared_once():
    assert sorted(corpus.CORPORA) == ["amazon", "movies", "nyt", "tweets"]
    assert len({c.file for c in corpus.CORPORA.values()}) == 4
    assert corpus.MOVIE_REVIEWS_FILE == corpus.CORPORA["movies"].file
    with pytest.raises(corpus.CorpusError, match="unknown corpus 'imdb'; the corpora are movies, tweets"):
        corpus.read_corpus(_sdist(), "imdb")


def test_a_missing_corpus_file_is_reported():
    with pytest.raises(corpus.CorpusError, match="found none"):
        corpus.read_corpus(_sdist({"movies": ROWS["movies"]}), "tweets")


def _items(n=80, seed=5):
    """Scores spread over [-4, 4] (some in the neutral band, some 0) and a few repeated texts."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.uniform(-4, 4, n), 1)
    scores[:6] = [0.0, 0.2, -0.4, 0.5, -0.5, 0.0]
    texts = [f"text {i}" for i in range(n)]
    texts[10] = texts[3]
    texts[20] = texts[7] = texts[2]
    return [(t, float(s)) for t, s in zip(texts, scores)]


def _small(name, n_train, n_test):
    return dataclasses.replace(tasks.TASKS[name], n_train=n_train, n_test=n_test)


@pytest.mark.parametrize("name", ["movies-polarity", "tweets-intensity"])
def test_split_is_deterministic_disjoint_and_inside_the_pool(name):
    items = _items()
    spec = _small(name, 20, None)
    a, b = tasks.split_task(spec, items, seed=1), tasks.split_task(spec, items, seed=1)
    assert np.array_equal(a.train_rows, b.train_rows) and np.array_equal(a.test_rows, b.test_rows)
    assert not np.array_equal(a.test_rows, tasks.split_task(spec, items, seed=2).test_rows)
    assert not set(a.train_rows) & set(a.test_rows)
    scores = np.array([s for _, s in items])
    polar = spec.neutral_band is not None
    eligible = {r for r in range(len(items)) if not polar or (abs(scores[r]) >= 0.5 and scores[r] != 0)}
    first_of_text = {}
    for r in sorted(eligible):
        first_of_text.setdefault(items[r][0], r)
    pool = set(first_of_text.values())
    assert len(pool) < len(eligible)  # some eligible rows repeat a text
    assert set(a.train_rows) | set(a.test_rows) == pool
    assert len(a.train_rows) == 20 and len(a.test_texts) == len(pool) - 20
    assert list(a.test_texts) == [items[r][0] for r in a.test_rows]
    expected = [int(scores[r] > 0) if polar else scores[r] for r in a.test_rows]
    assert a.test_targets.tolist() == expected
    assert a.test_targets.dtype == (np.int64 if polar else np.float64)


def test_split_that_does_not_fit_and_unknown_task():
    with pytest.raises(tasks.TaskError, match="50 train \\+ 40 test rows do not fit in its pool of 77"):
        tasks.split_task(_small("tweets-intensity", 50, 40), _items())
    with pytest.raises(tasks.TaskError, match="unknown task 'imdb'; the tasks are movies-polarity") as info:
        tasks.load_task("imdb")
    assert isinstance(info.value, EnergonError)


def test_load_task_reads_its_corpus(monkeypatch):
    rows = {name: [(f"{i}", f"{s:.1f}", f"{name} {i}") for i, s in enumerate(np.linspace(-3, 3, 40))]
            for name in corpus.CORPORA}
    monkeypatch.setattr(corpus, "fetch_sdist", lambda cache_dir=None: _sdist(rows))
    spec = _small("nyt-intensity", 10, 25)
    monkeypatch.setitem(tasks.TASKS, "nyt-intensity", spec)
    data = tasks.load_task("nyt-intensity", seed=3)
    assert len(data.train_texts) == 10 and len(data.test_texts) == 25
    assert all(t.startswith("nyt ") for t in data.train_texts + data.test_texts)
    assert np.array_equal(data.test_targets, np.round(np.linspace(-3, 3, 40), 1)[data.test_rows])


def test_average_ranks_match_scipy_with_ties():
    v = np.random.default_rng(0).integers(0, 5, size=(7, 30)).astype(float)
    assert np.array_equal(tasks.average_ranks(v), stats.rankdata(v, axis=1))


def _regression(n=150, seed=0):
    rng = np.random.default_rng(seed)
    targets = np.round(rng.normal(size=n), 1)  # rounded: ties, as in the human means
    return targets, targets + rng.normal(scale=1.0, size=n), targets + rng.normal(scale=1.5, size=n)


def _score(pred, targets, name=tasks.SPEARMAN):
    head = tasks.Head("t", name, np.array([1.0]), 0.0)
    return tasks.evaluate(head, np.asarray(pred, dtype=np.float64)[:, None], targets)


def test_spearman_and_its_bootstrap_se_against_scipy_resample_by_resample():
    targets, pred, _ = _regression()
    score = _score(pred, targets)
    assert score.metric == pytest.approx(stats.spearmanr(pred, targets).statistic, abs=1e-12)
    brute = [stats.spearmanr(pred[i], targets[i]).statistic
             for chunk in tasks.bootstrap_indices(len(targets)) for i in chunk]
    assert len(brute) == tasks.BOOTSTRAP_RESAMPLES
    assert score.se == pytest.approx(np.std(brute, ddof=1), rel=1e-9)
    # and of the size sampling theory gives for a correlation of this strength: (1 - r^2) / sqrt(n)
    assert 0.7 < score.se / ((1 - score.metric ** 2) / np.sqrt(len(targets))) < 1.4


def test_paired_spearman_difference_is_a_paired_bootstrap():
    targets, pred_a, pred_b = _regression()
    a, b = _score(pred_a, targets), _score(pred_b, targets)
    diff, se = tasks.paired_difference(a, b)
    assert diff == a.metric - b.metric
    brute = [stats.spearmanr(pred_a[i], targets[i]).statistic - stats.spearmanr(pred_b[i], targets[i]).statistic
             for chunk in tasks.bootstrap_indices(len(targets)) for i in chunk]
    assert se == pytest.approx(np.std(brute, ddof=1), rel=1e-9)
    assert se < np.hypot(a.se, b.se)  # the pairing removes the items' shared difficulty


def test_accuracy_se_is_binomial_and_its_paired_difference_a_paired_t():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    x_a, x_b = (np.where(rng.random(500) < p, 2 * labels - 1, 1 - 2 * labels) for p in (0.8, 0.75))
    a, b = _score(x_a, labels, tasks.ACCURACY), _score(x_b, labels, tasks.ACCURACY)
    assert a.metric == np.mean(x_a == 2 * labels - 1)
    assert a.se == pytest.approx(stats.binom(500, a.metric).std() / 500, rel=1e-12)
    diff, se = tasks.paired_difference(a, b)
    correct_a, correct_b = (a.predictions == labels).astype(float), (b.predictions == labels).astype(float)
    assert diff == pytest.approx(np.mean(correct_a - correct_b), abs=1e-15)
    assert diff / se == pytest.approx(stats.ttest_rel(correct_a, correct_b).statistic, rel=1e-12)


@pytest.mark.parametrize("metric", [tasks.ACCURACY, tasks.SPEARMAN])
def test_a_score_paired_with_itself_differs_by_exactly_zero(metric):
    targets, pred, _ = _regression()
    if metric == tasks.ACCURACY:
        targets = (targets > 0).astype(np.int64)
    score = _score(pred, targets, metric)
    assert tasks.paired_difference(score, score) == (0.0, 0.0)
    again = _score(pred.copy(), targets.copy(), metric)
    assert tasks.paired_difference(again, score) == (0.0, 0.0)


def test_unpaired_scores_are_refused():
    targets, pred, _ = _regression()
    with pytest.raises(tasks.TaskError, match="same test items; got 150 and 149 items"):
        tasks.paired_difference(_score(pred, targets), _score(pred[1:], targets[1:]))
    with pytest.raises(tasks.TaskError, match="cannot pair a accuracy score with a spearman score"):
        tasks.paired_difference(_score(pred, targets > 0, tasks.ACCURACY), _score(pred, targets))


def test_ridge_head_matches_the_closed_form_at_its_chosen_alpha():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 6))
    y = x @ rng.normal(size=6) + 0.5 + rng.normal(scale=0.3, size=120)
    head = tasks.fit_head(tasks.TASKS["tweets-intensity"], x, y)
    alpha = head.metadata["alpha"]
    assert alpha in tasks.RIDGE_ALPHAS
    xc, yc = x - x.mean(0), y - y.mean()
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(6), xc.T @ yc)
    assert np.allclose(head.coef, coef, atol=1e-8)
    assert head.intercept == pytest.approx(y.mean() - x.mean(0) @ coef, abs=1e-8)
    assert np.allclose(head.predict(x), x @ coef + head.intercept, atol=1e-8)


def test_logistic_head_separates_separable_labels():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 4))
    labels = (x[:, 0] - x[:, 2] > 0).astype(np.int64)
    head = tasks.fit_head(tasks.TASKS["movies-polarity"], x, labels)
    assert tasks.evaluate(head, x, labels).metric > 0.95
    with pytest.raises(tasks.TaskError, match="accuracy targets must be 0 or 1"):
        tasks.fit_head(tasks.TASKS["movies-polarity"], x, labels * 2.5)


@pytest.mark.models
def test_real_corpora_counts_and_task_sizes():
    try:
        sdist = corpus.fetch_sdist(os.environ.get("ENERGON_CACHE"))
    except corpus.CorpusDownloadError as exc:
        pytest.skip(f"VADER corpus not reachable: {exc}")
    items = {name: corpus.read_corpus(sdist, name) for name in corpus.CORPORA}
    assert {n: len(v) for n, v in items.items()} == {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
    sizes = {name: (len(d.train_texts), len(d.test_texts))
             for name, d in ((n, tasks.split_task(s, items[s.corpus])) for n, s in tasks.TASKS.items())}
    assert sizes == {"movies-polarity": (2000, 4000), "tweets-intensity": (1200, 3000),
                     "amazon-polarity": (1000, 1977), "nyt-intensity": (1200, 3919)}
