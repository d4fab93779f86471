"""The labelled text the accuracy figures are measured on: VADER's four human-scored corpora.

Hutto & Gilbert (ICWSM 2014) collected four sets of sentence-level snippets, each with the mean
sentiment rating of >= 20 human raters on a -4..4 scale (see :data:`CORPORA`): Rotten Tomatoes movie
reviews, tweets, Amazon product reviews and New York Times editorials. The data ships (MIT licence)
inside the ``vaderSentiment`` 3.3.2 *sdist* as ``additional_resources/hutto_ICWSM_2014.tar.gz``.
This module owns fetching that sdist at run time with pip (the corpus is never committed), reading the
two nested archives safely and in memory, parsing any of the four corpora, and turning scores into
binary labels.

Cache: ``$ENERGON_CACHE`` or ``~/.cache/energon-tvm``; the sdist is kept there and checked against its
published SHA-256 on every use.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..isa.errors import EnergonError

VADER_REQUIREMENT = "vaderSentiment==3.3.2"
SDIST_NAME = "vaderSentiment-3.3.2.tar.gz"
#: SHA-256 of the sdist on PyPI (files there are immutable): a cached or downloaded file that differs
#: is not the corpus the published figures were measured on.
SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
INNER_ARCHIVE = "hutto_ICWSM_2014.tar.gz"


@dataclass(frozen=True)
class CorpusSpec:
    """One of VADER's ground-truth corpora: its name here, its file in the inner archive, and what it is
    (with its size in the 3.3.2 sdist, which the real-corpus tests check)."""

    name: str
    file: str
    description: str


#: The four corpora, by name. Each file has one line per snippet: id, mean human score, text.
CORPORA: dict[str, CorpusSpec] = {c.name: c for c in (
    CorpusSpec("movies", "movieReviewSnippets_GroundTruth.txt",
               "10,605 sentence-level snippets of Rotten Tomatoes movie reviews"),
    CorpusSpec("tweets", "tweets_GroundTruth.txt", "4,200 tweets"),
    CorpusSpec("amazon", "amazonReviewSnippets_GroundTruth.txt",
               "3,708 sentence-level snippets of Amazon product reviews"),
    CorpusSpec("nyt", "nytEditorialSnippets_GroundTruth.txt",
               "5,190 sentence-level snippets of New York Times opinion editorials"),
)}
MOVIE_REVIEWS_FILE = CORPORA["movies"].file

SCORE_MIN, SCORE_MAX = -4.0, 4.0
#: Snippets whose mean human rating is within 0.5 of neutral are dropped from the binary task: on a
#: -4..4 scale such a mean says the raters did not agree on a polarity, so either label would be
#: noise. It drops 533 of the 10,605 movie-review snippets (37 of them exactly 0), leaving 10,072
#: (4,996 positive, 5,076 negative).
NEUTRAL_BAND = 0.5

#: Limits for reading archives. The real ones: the sdist has 20 members (2.4 MB), the inner archive
#: 14 members, the largest 1.4 MB. Generous, but small enough that a decompression bomb stops early.
MAX_MEMBERS = 1000
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 256 << 20
PIP_TIMEOUT_S = 600


class CorpusError(EnergonError):
    """The corpus cannot be fetched, does not match its checksum, or does not parse."""


class CorpusDownloadError(CorpusError):
    """pip could not download the sdist (no index reachable, pip missing, ...)."""


class TarSafetyError(CorpusError):
    """An archive holds a member that reading it must refuse (absolute path, ``..``, link, device,
    oversized member, too many members)."""


def cache_root() -> Path:
    """``$ENERGON_CACHE`` if set, else ``~/.cache/energon-tvm``."""
    env = os.environ.get("ENERGON_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "energon-tvm"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the verified ``vaderSentiment`` 3.3.2 sdist, downloading it with pip if not cached."""
    target_dir = (Path(cache_dir) if cache_dir is not None else cache_root()) / "vader"
    target = target_dir / SDIST_NAME
    if target.is_file():
        seen = _sha256(target)
        if seen == SDIST_SHA256:
            return target
        raise CorpusError(f"cached {target} has SHA-256 {seen}, expected {SDIST_SHA256}; delete it to download again")
    target_dir.mkdir(parents=True, exist_ok=True)
    # Download into a private directory and move into place only once verified, so an interrupted or
    # concurrent download never leaves a half-written file where the next run would trust it.
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   VADER_REQUIREMENT, "-d", tmp]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorpusDownloadError(f"`{' '.join(command)}` failed to run: {exc}") from exc
        downloaded = Path(tmp) / SDIST_NAME
        if proc.returncode != 0 or not downloaded.is_file():
            raise CorpusDownloadError(
                f"`{' '.join(command)}` exited with status {proc.returncode} without {SDIST_NAME}:\n"
                f"{proc.stderr.strip()[-2000:]}")
        seen = _sha256(downloaded)
        if seen != SDIST_SHA256:
            raise CorpusError(f"downloaded {SDIST_NAME} has SHA-256 {seen}, expected {SDIST_SHA256}")
        os.replace(downloaded, target)
    return target


# --- safe archive reading ---------------------------------------------------------------------------


def _check_member(member: tarfile.TarInfo, archive: str, max_member_bytes: int) -> None:
    """Refuse any member that could write outside a destination or is not plain data.

    Nothing is ever extracted to disk here, but an archive carrying such members is not the file we
    expect, and checking every member keeps these reads safe if someone later extracts the archive.
    """
    name = member.name
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise TarSafetyError(f"{archive}: member {name!r} has an absolute path")
    if ".." in path.parts:
        raise TarSafetyError(f"{archive}: member {name!r} escapes the archive with '..'")
    if member.issym() or member.islnk():
        raise TarSafetyError(f"{archive}: member {name!r} is a link (to {member.linkname!r}); links are refused")
    if not (member.isreg() or member.isdir()):
        raise TarSafetyError(f"{archive}: member {name!r} is not a regular file or directory (type {member.type!r})")
    if member.size > max_member_bytes:
        raise TarSafetyError(f"{archive}: member {name!r} is {member.size} bytes; the limit is {max_member_bytes}")


def _base_name_is(base: str) -> Callable[[str], bool]:
    return lambda name: PurePosixPath(name).name == base


def read_tar_member(source: bytes | str | os.PathLike, match: str | Callable[[str], bool], *,
                    archive: str | None = None, max_members: int = MAX_MEMBERS,
                    max_member_bytes: int = MAX_MEMBER_BYTES, max_total_bytes: int = MAX_TOTAL_BYTES) -> bytes:
    """The bytes of the one regular-file member of a (compressed) tar that ``match`` selects.

    ``source`` is the archive's bytes or path; ``match`` is a base name or a predicate on the member
    name. Every member of the archive is checked first (see :class:`TarSafetyError`); nothing is
    written to disk. Exactly one member must match.
    """
    archive = archive or (f"<{len(source)}-byte archive>" if isinstance(source, bytes) else str(source))
    if isinstance(match, str):
        match = _base_name_is(match)
    try:
        fileobj = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise CorpusError(f"cannot open archive {archive}: {exc}") from exc
    try:
        with fileobj, tarfile.open(fileobj=fileobj, mode="r:*") as tar:
            found, total = [], 0
            # Iterate rather than getmembers() so a bomb stops at the first member over a limit.
            for count, member in enumerate(tar, 1):
                if count > max_members:
                    raise TarSafetyError(f"{archive}: more than {max_members} members")
                _check_member(member, archive, max_member_bytes)
                total += member.size
                if total > max_total_bytes:
                    raise TarSafetyError(f"{archive}: members total more than {max_total_bytes} bytes")
                if member.isreg() and match(member.name):
                    found.append(member)
            if len(found) != 1:
                names = ", ".join(m.name for m in found) or "none"
                raise CorpusError(f"{archive}: expected exactly one matching member, found {names}")
            handle = tar.extractfile(found[0])
            return handle.read(max_member_bytes)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise CorpusError(f"{archive} is not a readable tar archive: {exc}") from exc


# --- parsing and labels -----------------------------------------------------------------------------


def parse_ground_truth(data: bytes, source: str = MOVIE_REVIEWS_FILE) -> list[tuple[str, float]]:
    """Rows of a VADER ``*_GroundTruth.txt`` file: tab-separated id, mean sentiment rating, text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{source} is not UTF-8: {exc}") from exc
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t", 2)
        if len(fields) != 3:
            raise CorpusError(f"{source} line {lineno}: expected id, score and text separated by tabs, "
                              f"got {len(fields)} field(s)")
        try:
            score = float(fields[1])
        except ValueError as exc:
            raise CorpusError(f"{source} line {lineno}: score {fields[1]!r} is not a number") from exc
        if not SCORE_MIN <= score <= SCORE_MAX:
            raise CorpusError(f"{source} line {lineno}: score {score} is outside [{SCORE_MIN:g}, {SCORE_MAX:g}]")
        items.append((fields[2].strip(), score))
    return items


def corpus_spec(name: str) -> CorpusSpec:
    """The :class:`CorpusSpec` called ``name`` (one of :data:`CORPORA`)."""
    try:
        return CORPORA[name]
    except (KeyError, TypeError):
        raise CorpusError(f"unknown corpus {name!r}; the corpora are {', '.join(CORPORA)}") from None


def read_corpus(sdist: bytes | str | os.PathLike, name: str) -> list[tuple[str, float]]:
    """The snippets of corpus ``name`` as ``(text, mean human score in [-4, 4])``, in file order, read
    from the sdist's bytes or path (both archives are read in memory and checked member by member)."""
    spec = corpus_spec(name)
    inner = read_tar_member(sdist, lambda n: PurePosixPath(n).parts[-2:] == ("additional_resources", INNER_ARCHIVE))
    return parse_ground_truth(read_tar_member(inner, spec.file, archive=INNER_ARCHIVE), spec.file)


def fetch_vader_corpus(name: str, cache_dir: str | os.PathLike | None = None) -> list[tuple[str, float]]:
    """All snippets of corpus ``name`` (see :data:`CORPORA`) as ``(text, mean human score)``, in file
    order, from the verified sdist (downloaded with pip if not cached)."""
    corpus_spec(name)  # an unknown name fails before any download
    return read_corpus(fetch_sdist(cache_dir), name)


def fetch_vader_movie_reviews(cache_dir: str | os.PathLike | None = None) -> list[tuple[str, float]]:
    """All 10,605 movie-review snippets as ``(text, mean human score in [-4, 4])``, in file order
    (row ``i`` is snippet id ``i + 1``)."""
    return fetch_vader_corpus("movies", cache_dir)


def _check_band(neutral_band: float) -> float:
    if not 0.0 <= neutral_band < SCORE_MAX:
        raise CorpusError(f"neutral band {neutral_band} is outside [0, {SCORE_MAX:g})")
    return float(neutral_band)


def polar_rows(items: Sequence[tuple[str, float]], neutral_band: float = NEUTRAL_BAND) -> np.ndarray:
    """Indices of the items kept for the binary task: ``|score| >= neutral_band`` and never 0."""
    band = _check_band(neutral_band)
    scores = np.array([score for _, score in items], dtype=np.float64)
    return np.flatnonzero((np.abs(scores) >= band) & (scores != 0))


def labels_of(items: Sequence[tuple[str, float]], rows: Sequence[int]) -> np.ndarray:
    """Binary labels (1 = positive score) of ``items[rows]``, int64."""
    return np.array([int(items[r][1] > 0) for r in rows], dtype=np.int64)


def binary_sentiment(items: Sequence[tuple[str, float]],
                     neutral_band: float = NEUTRAL_BAND) -> tuple[list[str], np.ndarray]:
    """Texts and int64 labels (1 positive, 0 negative) of the items outside the neutral band
    (see :data:`NEUTRAL_BAND` for why the near-neutral ones are dropped)."""
    rows = polar_rows(items, neutral_band)
    return [items[r][0] for r in rows], labels_of(items, rows)


def sample_rows(items: Sequence[tuple[str, float]], n: int | None, seed: int = 0,
                neutral_band: float = NEUTRAL_BAND) -> np.ndarray:
    """A fixed random subset of ``n`` polar rows (all of them if ``n`` is None), in ascending order.

    Random rather than the first ``n``: the file's order follows the source reviews, so a prefix
    would be a few reviews' worth of snippets rather than a sample of the corpus.
    """
    rows = polar_rows(items, neutral_band)
    if n is None:
        return rows
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 2 <= n <= len(rows):
        raise CorpusError(f"sample size {n!r} is outside [2, {len(rows)}] (polar snippets outside the "
                          f"neutral band {neutral_band:g})")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=int(n), replace=False))
