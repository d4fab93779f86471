"""energon_tvm.tvmc.noise: known-harmless third-party lines vanish, every other line survives, ``-v`` shows
all, and an exception inside the block propagates with the output before it kept."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import warnings
from pathlib import Path

import pytest

from energon_tvm.tvmc import noise
from energon_tvm.tvmc.noise import HARMLESS, quiet

DOCS = Path(__file__).resolve().parents[2] / "docs" / "import.md"


def _example(channel: str) -> noise.HarmlessLine:
    return next(e for e in HARMLESS if e.channel == channel)


def _c_write(text: bytes) -> None:
    """Write to file descriptor 2 from C, as TVM's LOG(WARNING) does (not through Python's sys.stderr)."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.write(2, text, len(text)) == len(text)


def test_every_entry_recognises_its_own_example_and_the_docs_list_it():
    docs = DOCS.read_text()
    for entry in HARMLESS:
        assert entry.channel in noise.CHANNELS
        text = entry.example.split("] ", 1)[1] if entry.channel == "logging" and "] " in entry.example \
            else entry.example
        assert entry.matches(text), entry
        assert noise.harmless(entry.channel, text) is entry
        assert f"`{entry.pattern}`" in docs, f"docs/import.md does not list {entry.pattern!r}"
    assert noise.harmless("stderr", "Warning: something else entirely") is None
    with pytest.raises(ValueError, match="channel 'stdout'"):
        noise.HarmlessLine("stdout", "x", "s", "x", "w")


def test_stderr_lines_from_c_are_filtered_and_the_rest_kept_in_order(capfd):
    fast_mode = _example("stderr").example
    with quiet():
        _c_write(f"{fast_mode}\n".encode())
        _c_write(b"first real line\n")
        os.write(2, f"[06:01:24] {fast_mode.split('] ', 1)[1]}\n".encode())
        os.write(2, b"Error: a real failure\n")
        _c_write(b"last line without a newline")
    err = capfd.readouterr().err
    assert err == "first real line\nError: a real failure\nlast line without a newline"
    # descriptor 2 is the real stderr again
    os.write(2, f"{fast_mode}\n".encode())
    assert capfd.readouterr().err == f"{fast_mode}\n"


def test_verbose_shows_everything(capfd, caplog):
    fast_mode = _example("stderr").example
    logger = logging.getLogger(_example("logging").source)
    with warnings.catch_warnings(record=True) as seen, quiet(verbose=1):
        warnings.simplefilter("always")
        _c_write(f"{fast_mode}\n".encode())
        logger.warning("Evaluation failed: %s", "cannot reshape array of size 1 into shape (1,32)")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
    assert capfd.readouterr().err == f"{fast_mode}\n"
    assert [r.getMessage() for r in caplog.records] == ["Evaluation failed: cannot reshape array of size 1 into "
                                                        "shape (1,32)"]
    assert len(seen) == 1 and "LeafSpec" in str(seen[0].message)


def test_logging_and_warnings_are_filtered_only_inside(caplog):
    name = _example("logging").source
    logger, other = logging.getLogger(name), logging.getLogger("energon_tvm.tests.other")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet():
            logger.warning("Evaluation failed: %s", "cannot reshape array")
            logger.warning("Folding produced %d nodes", 3)
            other.warning("Evaluation failed: in someone else's logger")
            warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use TreeSpec", FutureWarning,
                          stacklevel=1)
            warnings.warn("a real deprecation", DeprecationWarning, stacklevel=1)
        logger.warning("Evaluation failed: %s", "outside")
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated (outside)", FutureWarning, stacklevel=1)
    assert [r.getMessage() for r in caplog.records] == [
        "Folding produced 3 nodes", "Evaluation failed: in someone else's logger", "Evaluation failed: outside"]
    assert [str(w.message) for w in seen] == ["a real deprecation",
                                              "`isinstance(treespec, LeafSpec)` is deprecated (outside)"]
    assert logger.filters == []


def test_an_exception_inside_propagates_and_output_before_it_is_kept(capfd):
    fast_mode = _example("stderr").example
    with pytest.raises(RuntimeError, match="the work failed"), quiet():
        _c_write(b"progress before the failure\n")
        _c_write(f"{fast_mode}\n".encode())
        _c_write(b"half a line")
        raise RuntimeError("the work failed")
    assert capfd.readouterr().err == "progress before the failure\nhalf a line"
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_much_more_output_than_a_pipe_holds_neither_blocks_nor_is_lost(capfd):
    lines = [f"line {i:06d} " + "x" * 100 + "\n" for i in range(20000)]  # ~2.2 MB, 30x a pipe's buffer
    fast_mode = _example("stderr").example + "\n"
    with quiet():
        for i in range(0, len(lines), 1000):
            _c_write("".join(lines[i:i + 1000]).encode() + fast_mode.encode())
    assert capfd.readouterr().err == "".join(lines)


def test_quiet_blocks_nest(capfd):
    fast_mode = _example("stderr").example
    with quiet():
        _c_write(b"outer\n")
        with quiet():
            _c_write(f"{fast_mode}\ninner\n".encode())
        _c_write(b"outer again\n")
    assert capfd.readouterr().err == "outer\ninner\nouter again\n"


def test_tvm_take_warning_is_dropped_and_shown_with_verbose(capfd):
    """The real line: TVM's C++ prints it when it lowers a take in fast mode (an ONNX Gather)."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.script import relax as R  # noqa: F401 - the builder below needs the ops registered

    def build():
        bb = relax.BlockBuilder()
        table = relax.Var("table", relax.TensorType((8, 4), "float32"))
        ids = relax.Var("ids", relax.TensorType((3,), "int64"))
        with bb.function("main", [table, ids]):
            out = bb.emit(relax.op.take(table, ids, axis=0, mode="fast"))
            bb.emit_func_output(out)
        tvm.compile(bb.get(), target="llvm")

    capfd.readouterr()
    with quiet():
        build()
    assert "Fast mode segfaults" not in capfd.readouterr().err
    with quiet(verbose=1):
        build()
    shown = capfd.readouterr().err
    assert re.search(_example("stderr").pattern, shown), shown
