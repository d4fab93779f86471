"""The sentiment probe: split, training, accuracy, the pickle-free file format and, marked `models`,
a probe trained on a small sample of real snippets embedded by the exported model."""

import numpy as np
import pytest

from energon_tvm.models import corpus, minilm, probe

pytest.importorskip("sklearn")


def _blobs(n=400, dim=16, seed=0):
    """Two Gaussian classes, unit-normalised like sentence embeddings."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim)) + 0.8 * (2 * labels[:, None] - 1) * np.eye(dim)[0]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_stratified_split_is_fixed_and_keeps_proportions():
    labels = np.array([0] * 70 + [1] * 30)
    train, test = probe.stratified_split(labels, 0.3, seed=0)
    assert len(test) == 30 and labels[test].sum() == 9  # 30% of each class
    assert not set(train) & set(test) and len(train) + len(test) == 100
    again = probe.stratified_split(labels, 0.3, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    with pytest.raises(probe.ProbeError, match=r"test fraction 1.5 is outside \(0, 1\)"):
        probe.stratified_split(labels, 1.5)
    with pytest.raises(probe.ProbeError, match="class 1 has 1 example"):
        probe.stratified_split(np.array([0, 0, 0, 1]), 0.3)


def test_probe_learns_and_survives_a_round_trip(tmp_path):
    x, y = _blobs()
    trained = probe.fit_with_split(x, y, index=np.arange(len(y)) + 1000, metadata={"note": "blobs"})
    meta = trained.metadata
    assert meta["test_accuracy"] > 0.75 and meta["n_test"] == 120 and meta["note"] == "blobs"
    assert trained.test_index.min() >= 1000
    path = probe.save_probe(trained, tmp_path / "sub" / "p.npz")
    loaded = probe.load_probe(path)
    np.testing.assert_array_equal(loaded.predict(x), trained.predict(x))
    assert loaded.metadata == meta and np.array_equal(loaded.test_index, trained.test_index)
    assert probe.accuracy(loaded, x, y) == probe.accuracy(trained, x, y)


def test_probe_files_never_need_pickle(tmp_path):
    trained = probe.train_probe(*_blobs())
    path = probe.save_probe(trained, tmp_path / "p.npz")
    with np.load(path, allow_pickle=False) as data:  # would raise on any object array
        assert {data[name].dtype.kind for name in data.files} <= {"U", "f", "i"}
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format=np.array(probe.PROBE_FORMAT), coef=trained.coef, intercept=np.array(0.0),
             metadata=np.array({"a": 1}, dtype=object), train_index=np.zeros(0), test_index=np.zeros(0))
    with pytest.raises(probe.ProbeError, match="cannot read probe file"):
        probe.load_probe(pickled)
    other = tmp_path / "other.npz"
    np.savez(other, format=np.array("something/else"), coef=trained.coef, intercept=np.array(0.0),
             metadata=np.array("{}"), train_index=np.zeros(0), test_index=np.zeros(0))
    with pytest.raises(probe.ProbeError, match="format 'something/else'"):
        probe.load_probe(other)


def test_bad_inputs_are_named():
    trained = probe.train_probe(*_blobs())
    with pytest.raises(probe.ProbeError, match="embeddings have 8 features; the probe was trained on 16"):
        probe.accuracy(trained, np.zeros((3, 8), np.float32), [0, 1, 0])
    with pytest.raises(probe.ProbeError, match="labels must be a vector of 3 entries"):
        probe.accuracy(trained, np.zeros((3, 16), np.float32), [0, 1])
    with pytest.raises(probe.ProbeError, match="both classes"):
        probe.train_probe(np.ones((4, 16), np.float32), [1, 1, 1, 1])
    with pytest.raises(probe.ProbeError, match="non-finite"):
        probe.train_probe(np.full((2, 16), np.nan, np.float32), [0, 1])


@pytest.mark.models
def test_probe_on_real_snippets_beats_chance(onnx_model, vader_items, tmp_path):
    rows = corpus.sample_rows(vader_items, 300, seed=0)
    labels = corpus.labels_of(vader_items, rows)
    emb = minilm.embed_onnxruntime(onnx_model.path, [vader_items[r][0] for r in rows], progress=False)
    trained = probe.fit_with_split(emb, labels, rows, metadata={"index": probe.VADER_ROWS})
    majority = max(labels.mean(), 1 - labels.mean())
    assert trained.metadata["test_accuracy"] > majority + 0.12
    # The test set can be rebuilt from the corpus alone and gives the same accuracy.
    texts, test_labels = probe.probe_test_set(trained, vader_items)
    positions = np.searchsorted(rows, trained.test_index)
    assert texts == [vader_items[r][0] for r in trained.test_index]
    assert probe.accuracy(trained, emb[positions], test_labels) == trained.metadata["test_accuracy"]


@pytest.mark.models
def test_probe_command_line(onnx_model, vader_items, tmp_path, capsys):
    from energon_tvm.models.__main__ import main

    out = tmp_path / "probe.npz"
    assert main(["probe", "--onnx", str(onnx_model.path), "--n", "40", "--no-progress", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dense accuracy: train" in printed and "28 train / 12 test" in printed
    assert probe.load_probe(out).metadata["seq_len"] == onnx_model.seq_len


def test_command_line_reports_user_errors_in_one_line(capsys):
    from energon_tvm.models.__main__ import main

    assert main(["export", "--seq-len", "1000", "-o", "unused.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sequence length 1000 is outside [2, 512]") and err.count("\n") == 1
