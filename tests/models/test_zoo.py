"""The model zoo: the split MPNet zip read safely, and MPNet's attention routed through a hook unchanged."""

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


@pytest.mark.models
@pytest.mark.slow
def test_mpnet_through_the_hook_equals_the_model():
    from energon_tvm.models.evaluation import LayerAttention

    _installed("all-mpnet-base-v2")
    texts = ["A gripping, beautifully acted film.", "Dull and far too long.", "It was fine, I suppose."]
    plain = zoo.embed("all-mpnet-base-v2", zoo.load_model("all-mpnet-base-v2"), texts)
    hook = LayerAttention()
    hooked = zoo.load_model("all-mpnet-base-v2", attention=hook)
    hook.reset(None)
    np.testing.assert_allclose(zoo.embed("all-mpnet-base-v2", hooked, texts), plain, atol=1e-5)
    assert len(hook.layer_of) == 12
    # a real model, not noise: the two reviews are further apart than a review and itself
    assert plain[0] @ plain[1] < 0.5 and np.allclose(np.linalg.norm(plain, axis=1), 1, atol=1e-6)
