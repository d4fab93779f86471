"""The VADER corpus loader: safe reading of crafted archives, parsing, labels, sampling, the download
path (faked, no network), and, marked `models`, the real 10,605 movie-review snippets."""

import io
import subprocess
import tarfile

import numpy as np
import pytest
from energon_tvm.isa.errors import EnergonError

from energon_tvm.models import corpus


def _tar(members, mode="w:gz"):
    """A tar archive's bytes; ``members`` are (TarInfo, bytes or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name, data=b"hello"):
    return tarfile.TarInfo(name), data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info, None


def test_reads_the_one_matching_member_of_nested_archives():
    inner = _tar([_file("data/movieReviewSnippets_GroundTruth.txt", b"1\t2.5\tGood.\r\n")])
    outer = _tar([_file("pkg/additional_resources/hutto_ICWSM_2014.tar.gz", inner), _file("pkg/setup.py")])
    got = corpus.read_tar_member(outer, "hutto_ICWSM_2014.tar.gz")
    assert corpus.read_tar_member(got, corpus.MOVIE_REVIEWS_FILE) == b"1\t2.5\tGood.\r\n"


@pytest.mark.parametrize("member, reason", [
    (_file("../evil.txt"), "escapes the archive"),
    (_file("pkg/../../evil.txt"), "escapes the archive"),
    (_file("/etc/evil.txt"), "absolute path"),
    (_special("pkg/movieReviewSnippets_GroundTruth.txt", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
    (_special("pkg/hard", tarfile.LNKTYPE, "pkg/setup.py"), "is a link"),
    (_special("pkg/dev", tarfile.CHRTYPE), "not a regular file"),
    (_special("pkg/fifo", tarfile.FIFOTYPE), "not a regular file"),
])
def test_crafted_members_are_refused(member, reason):
    # The hostile member is not the one asked for: the whole archive is refused anyway.
    data = _tar([_file("pkg/movieReviewSnippets_GroundTruth.txt"), member])
    with pytest.raises(corpus.TarSafetyError, match=reason) as info:
        corpus.read_tar_member(data, "movieReviewSnippets_GroundTruth.txt")
    assert isinstance(info.value, EnergonError)
    assert repr(member[0].name) in str(info.value)


def test_size_and_count_limits():
    data = _tar([_file("a.txt", b"x" * 100)], mode="w")
    with pytest.raises(corpus.TarSafetyError, match="'a.txt' is 100 bytes; the limit is 99"):
        corpus.read_tar_member(data, "a.txt", max_member_bytes=99)
    many = _tar([_file(f"f{i}.txt") for i in range(5)])
    with pytest.raises(corpus.TarSafetyError, match="more than 4 members"):
        corpus.read_tar_member(many, "f0.txt", max_members=4)
    with pytest.raises(corpus.TarSafetyError, match="more than 20 bytes"):
        corpus.read_tar_member(many, "f0.txt", max_total_bytes=20)


def test_missing_ambiguous_and_corrupt_archives():
    data = _tar([_file("a/x.txt"), _file("b/x.txt")])
    with pytest.raises(corpus.CorpusError, match="exactly one matching member, found a/x.txt, b/x.txt"):
        corpus.read_tar_member(data, "x.txt")
    with pytest.raises(corpus.CorpusError, match="found none"):
        corpus.read_tar_member(data, "y.txt")
    with pytest.raises(corpus.CorpusError, match="not a readable tar archive"):
        corpus.read_tar_member(b"\x1f\x8b" + b"garbage" * 100, "x.txt")


def test_parse_ground_truth():
    data = b"1\t2.26666666667\tThe Rock is destined ...\r\n2\t-0.6\tToo tepid\tbiopic\r\n\r\n"
    assert corpus.parse_ground_truth(data) == [("The Rock is destined ...", 2.26666666667),
                                               ("Too tepid\tbiopic", -0.6)]
    with pytest.raises(corpus.CorpusError, match="line 2: expected id, score and text"):
        corpus.parse_ground_truth(b"1\t1\tok\n2\t3\n")
    with pytest.raises(corpus.CorpusError, match=r"line 1: score 4.5 is outside \[-4, 4\]"):
        corpus.parse_ground_truth(b"1\t4.5\ttoo happy\n")
    with pytest.raises(corpus.CorpusError, match="not a number"):
        corpus.parse_ground_truth(b"1\tgreat\ttext\n")


def test_binary_labels_drop_the_neutral_band():
    items = [("a", 2.0), ("b", -0.49), ("c", 0.0), ("d", -0.5), ("e", 0.5), ("f", -3.9)]
    texts, labels = corpus.binary_sentiment(items)
    assert texts == ["a", "d", "e", "f"] and labels.tolist() == [1, 0, 1, 0] and labels.dtype == np.int64
    texts, _ = corpus.binary_sentiment(items, neutral_band=0.0)
    assert texts == ["a", "b", "d", "e", "f"]  # a zero score has no polarity whatever the band
    with pytest.raises(corpus.CorpusError, match=r"neutral band 4 is outside \[0, 4\)"):
        corpus.binary_sentiment(items, neutral_band=4)


def test_sample_rows_is_fixed_by_the_seed():
    items = [(str(i), (-1.0) ** i) for i in range(50)]
    a = corpus.sample_rows(items, 10, seed=3)
    assert np.array_equal(a, corpus.sample_rows(items, 10, seed=3)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, corpus.sample_rows(items, 10, seed=4))
    with pytest.raises(corpus.CorpusError, match=r"sample size 51 is outside \[2, 50\]"):
        corpus.sample_rows(items, 51)


def test_cached_sdist_with_the_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "vader").mkdir()
    (tmp_path / "vader" / corpus.SDIST_NAME).write_bytes(b"not the sdist")
    with pytest.raises(corpus.CorpusError, match=f"expected {corpus.SDIST_SHA256}"):
        corpus.fetch_sdist(tmp_path)


def test_failed_download_reports_pips_stderr(tmp_path, monkeypatch):
    def fake_run(command, **kwargs):
        assert command[1:] == ["-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "vaderSentiment==3.3.2", "-d", command[-1]]
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(corpus.subprocess, "run", fake_run)
    with pytest.raises(corpus.CorpusDownloadError, match="status 1 .*\n.*No matching distribution"):
        corpus.fetch_sdist(tmp_path)
    assert not (tmp_path / "vader" / corpus.SDIST_NAME).exists()


@pytest.mark.models
def test_real_movie_review_snippets(vader_items):
    assert len(vader_items) == 10605  # the README's count; the task needs >= 2000
    scores = np.array([s for _, s in vader_items])
    assert scores.min() >= -4 and scores.max() <= 4 and scores.min() < -3 and scores.max() > 3
    assert all(text and "\t" not in text and "\r" not in text for text, _ in vader_items)
    assert vader_items[2] == ("Effective but too tepid biopic", -0.6)
    texts, labels = corpus.binary_sentiment(vader_items)
    assert len(texts) == 10072 and int(labels.sum()) == 4996
