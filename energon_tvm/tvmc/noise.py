"""What third-party output a user sees: known-harmless lines from torch, onnx, onnxscript and TVM, filtered.

Importing, exporting and building a model make the libraries underneath print lines that read like
failures but are not (TVM's C++ "Fast mode segfaults ...", onnxscript's "Evaluation failed: ...",
torch's "torchvision is not installed"). :data:`HARMLESS` is the one table of those lines, each with
why it is harmless; :func:`quiet` drops exactly them and lets everything else through. ``docs/import.md``
lists the table.

They arrive three ways, and :func:`quiet` filters each where it arrives:

- ``warning``: Python :mod:`warnings` (dropped by a warnings filter on the message);
- ``logging``: Python :mod:`logging` records of one named logger (dropped by a filter on that logger);
- ``stderr``: bytes written straight to file descriptor 2 by C++ (TVM's ``LOG(WARNING)``). Descriptor 2
  is pointed at a temporary file for the duration; a relay thread copies the file's complete lines
  that are not known-harmless to the real stderr as they arrive, and the rest when the block ends,
  exception or not. Writers never wait for the relay (a file, unlike a pipe, never fills up), so
  nothing can deadlock, and what was relayed before a crash is already on the terminal.

Python-level writes to ``sys.stderr`` reach descriptor 2 too when ``sys.stderr`` is the process's
stderr, so they pass the same line filter (and only known-harmless lines are ever dropped).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

#: how a line arrives (see the module docstring)
CHANNELS = ("stderr", "warning", "logging")


@dataclass(frozen=True)
class HarmlessLine:
    """One known-harmless third-party line: where it arrives, how to recognise it, and why it is harmless."""

    channel: str   # one of CHANNELS
    pattern: str   # regular expression searched in the line (stderr), the warning's or the log record's message
    source: str    # who prints it; for channel "logging", the exact logger name the filter is attached to
    example: str   # the line as a user sees it
    why: str

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"HarmlessLine channel {self.channel!r} is not one of {', '.join(CHANNELS)}")
        re.compile(self.pattern)

    def matches(self, text: str) -> bool:
        return re.search(self.pattern, text) is not None


HARMLESS: tuple[HarmlessLine, ...] = (
    HarmlessLine(
        "stderr", r"topi/transform\.h:\d+: Warning: Fast mode segfaults when there are out-of-bounds indices",
        "TVM C++ (topi::take, building a Gather / embedding lookup)",
        "[05:58:12] /project/include/tvm/topi/transform.h:1261: Warning: Fast mode segfaults when there are "
        "out-of-bounds indices. Make sure input indices are in bound",
        "TVM prints it whenever it lowers a take (gather) in its fast mode, i.e. for every ONNX Gather, "
        "whatever the indices. The only gathers in a transformer are the embedding lookups, whose indices "
        "are token ids and positions that the model's own vocabulary and position table bound; it is not "
        "a report of anything that happened."),
    HarmlessLine(
        "stderr", r"block_builder\.cc:\d+: Warning: BlockBuilder destroyed with remaining blocks",
        "TVM C++ (relax::BlockBuilder, freed after a failed ONNX import)",
        "[06:01:24] /project/src/relax/ir/block_builder.cc:67: Warning: BlockBuilder destroyed with remaining "
        "blocks!",
        "TVM's ONNX importer builds the module in a BlockBuilder; when the importer fails on a node, the "
        "half-built module is thrown away and TVM notes that it was unfinished. The failure itself is what "
        "tvmc reports (and retries on an optimised copy of the model); the note adds nothing to it."),
    HarmlessLine(
        "logging", r"^Evaluation failed: ", "onnxscript.optimizer._constant_folding",
        "Evaluation failed: cannot reshape array of size 1 into shape (1,32)",
        "onnxscript's constant folder, inside torch.onnx.export(dynamo=True), tries to evaluate each node "
        "with the onnx reference evaluator to fold it into a constant; when the evaluator cannot (here a "
        "Reshape of a broadcast scalar), the node is simply kept in the graph unfolded. The exported "
        "model is complete and correct either way."),
    HarmlessLine(
        "logging", r"^torchvision is not installed\. Skipping torchvision::",
        "torch.onnx._internal.exporter._registration",
        "W1202 05:57:32.840000 4506 site-packages/torch/onnx/_internal/exporter/_registration.py:107] "
        "torchvision is not installed. Skipping torchvision::nms",
        "torch's ONNX exporter registers translations for torchvision's operators (nms, roi_align, ...) "
        "when torchvision is present; a transformer uses none of them, so without torchvision nothing is "
        "missing from the export."),
    HarmlessLine(
        "warning", r"isinstance\(treespec, LeafSpec\)` is deprecated",
        "torch.utils._pytree (a FutureWarning, shown at copyreg.py)",
        "copyreg.py:105: FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated, use "
        "`isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead.",
        "torch's own exporter code uses an API torch has deprecated; it says nothing about the model "
        "and needs nothing from the user."),
)


def harmless(channel: str, text: str, table: tuple[HarmlessLine, ...] = HARMLESS) -> HarmlessLine | None:
    """The table entry that makes ``text``, arriving on ``channel``, known-harmless; None when none does."""
    return next((entry for entry in table if entry.channel == channel and entry.matches(text)), None)


class _DropHarmless(logging.Filter):
    def __init__(self, entries: tuple[HarmlessLine, ...]):
        super().__init__()
        self.entries = entries

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(entry.matches(message) for entry in self.entries)


@contextmanager
def _logging_filtered(table: tuple[HarmlessLine, ...]) -> Iterator[None]:
    by_logger: dict[str, list[HarmlessLine]] = {}
    for entry in table:
        if entry.channel == "logging":
            by_logger.setdefault(entry.source, []).append(entry)
    # a logger's own filters see every record logged on it, whichever handler (or none: logging's last
    # resort) would print it; the logger exists from here on even if its module is imported later
    attached = [(logging.getLogger(name), _DropHarmless(tuple(entries))) for name, entries in by_logger.items()]
    for logger, filt in attached:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger, filt in attached:
            logger.removeFilter(filt)


@contextmanager
def _warnings_filtered(table: tuple[HarmlessLine, ...]) -> Iterator[None]:
    with warnings.catch_warnings():
        for entry in table:
            if entry.channel == "warning":
                warnings.filterwarnings("ignore", message=f".*(?:{entry.pattern})")
        yield


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the real stderr is closed or its reader went away: nothing left to show it on
        pass


class _Relay:
    """Copies the lines written to a temporary file to ``out`` (a file descriptor), dropping the ones
    ``drop`` says are harmless. A thread polls the file while the work runs; :meth:`finish` copies the
    rest, a last line without its newline included."""

    POLL_SECONDS = 0.05
    CHUNK = 1 << 16

    def __init__(self, sink_fd: int, out: int, drop: Callable[[str], bool]):
        self.sink_fd, self.out, self.drop = sink_fd, out, drop
        self.offset = 0
        self.pending = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="energon-tvm stderr relay", daemon=True)
        self.thread.start()

    def _pump(self, final: bool) -> None:
        while True:
            data = os.pread(self.sink_fd, self.CHUNK, self.offset)
            if not data:
                break
            self.offset += len(data)
            self.pending += data
            *lines, self.pending = self.pending.split(b"\n")
            self._emit(line + b"\n" for line in lines)
        if final and self.pending:
            self._emit([self.pending])
            self.pending = b""

    def _emit(self, lines) -> None:
        kept = b"".join(line for line in lines if not self.drop(line.decode("utf-8", "replace")))
        if kept:
            _write_all(self.out, kept)

    def _run(self) -> None:
        while not self.stop.wait(self.POLL_SECONDS):
            try:
                self._pump(final=False)
            except OSError:  # the file went away under us: finish() reports what is left
                return

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        self._pump(final=True)


def _flush_python_stderr() -> None:
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed or detached
            pass


@contextmanager
def _stderr_filtered(table: tuple[HarmlessLine, ...], fd: int = 2) -> Iterator[None]:
    try:
        saved = os.dup(fd)
    except OSError:  # no stderr at all (a daemon, pythonw): nothing to show, nothing to filter
        yield
        return
    try:
        with tempfile.TemporaryFile(prefix="energon-tvm-stderr-") as sink:
            _flush_python_stderr()
            os.dup2(sink.fileno(), fd)
            relay = _Relay(sink.fileno(), saved, lambda line: harmless("stderr", line, table) is not None)
            try:
                yield
            finally:
                _flush_python_stderr()
                os.dup2(saved, fd)
                relay.finish()
    finally:
        os.close(saved)


@contextmanager
def quiet(verbose: int = 0, table: tuple[HarmlessLine, ...] = HARMLESS) -> Iterator[None]:
    """Within the block, drop the known-harmless third-party lines of ``table`` (:data:`HARMLESS`)
    from Python warnings, logging and file descriptor 2; every other line still shows, exceptions
    propagate, and what was written before one is kept. ``verbose`` > 0 (``tvmc -v``) shows everything:
    the block runs untouched."""
    if verbose:
        yield
        return
    with ExitStack() as stack:
        stack.enter_context(_stderr_filtered(table))
        stack.enter_context(_warnings_filtered(table))
        stack.enter_context(_logging_filtered(table))
        yield
