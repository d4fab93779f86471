"""Real models and real data for end-to-end evaluation: all-MiniLM-L6-v2 and VADER's movie reviews.

- :mod:`.minilm`: the model's offline weights, tokenizer, ONNX export, pooling, dense embeddings;
- :mod:`.corpus`: the human-scored movie-review snippets, fetched at run time and read safely;
- :mod:`.probe`: the frozen logistic-regression probe that turns embeddings into an accuracy.

Command line: ``python -m energon_tvm.models export|probe``. Importing this package imports numpy
only; torch, transformers, tokenizers, onnxruntime and scikit-learn load when a function needs them.
"""

from .corpus import (
    NEUTRAL_BAND,
    CorpusDownloadError,
    CorpusError,
    TarSafetyError,
    binary_sentiment,
    fetch_vader_movie_reviews,
    read_tar_member,
    sample_rows,
)
from .minilm import (
    INPUT_NAMES,
    OUTPUT_NAME,
    ModelInputError,
    ModelNotInstalledError,
    embed_onnxruntime,
    embed_torch,
    export_onnx,
    load_tokenizer,
    mean_pool,
    model_dir,
    sentence_embeddings,
    tokenize,
)
from .probe import Probe, ProbeError, accuracy, fit_with_split, load_probe, probe_test_set, save_probe, train_probe

__all__ = [
    "INPUT_NAMES", "NEUTRAL_BAND", "OUTPUT_NAME", "CorpusDownloadError", "CorpusError", "ModelInputError",
    "ModelNotInstalledError", "Probe", "ProbeError", "TarSafetyError", "accuracy", "binary_sentiment",
    "embed_onnxruntime", "embed_torch", "export_onnx", "fetch_vader_movie_reviews", "fit_with_split",
    "load_probe", "load_tokenizer", "mean_pool", "model_dir", "probe_test_set", "read_tar_member",
    "sample_rows", "save_probe", "sentence_embeddings", "tokenize", "train_probe",
]
