"""Model loading: an ONNX file or an exported PyTorch program, to a Relax module with static shapes.

``--input-shapes "name:[1,128],mask:[1,128]"`` (:mod:`.shapes`) fixes dynamic dimensions; every input
must end up static (Energon programs are compiled for one shape). An ONNX model TVM's importer fails on
is retried once on an onnxruntime basic-optimised copy with the input shapes pinned; a failure names the
ONNX node and op type (docs/import.md). The import's known-harmless third-party output is filtered
(:mod:`.noise`).
"""

from __future__ import annotations

import pickle
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import TVMCError
from .shapes import parse_input_shapes

FORMATS = ("onnx", "pytorch")


@dataclass(frozen=True)
class LoadedModel:
    """A model imported into Relax, with the specs of its inputs and the names of its outputs."""

    mod: object  # tvm.IRModule
    inputs: tuple
    outputs: tuple
    format: str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def guess_format(path: Path, model_format: str | None) -> str:
    if model_format:
        if model_format not in FORMATS:
            raise TVMCError(f"unknown --model-format {model_format!r}; known: {', '.join(FORMATS)}")
        return model_format
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt2", ".ep"):
        return "pytorch"
    raise TVMCError(f"cannot tell the format of {path.name!r} from its suffix; use --model-format "
                    f"{'|'.join(FORMATS)}")


#: protobuf cannot serialise a message of 2 GiB or more; a bigger model is checked from its file and
#: goes to onnxruntime with its tensors in an external data file
_PROTO_LIMIT = (2 << 30) - (64 << 20)


def _read_onnx(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError, ValueError, OSError... for a bad file
        raise TVMCError(f"{path} is not a readable ONNX model: {type(err).__name__}: {err}") from None
    try:  # a model past protobuf's 2 GiB limit can only be checked from its file
        onnx.checker.check_model(str(path) if model.ByteSize() >= _PROTO_LIMIT else model)
    except Exception as err:
        raise TVMCError(f"{path} is not a valid ONNX model: {err}") from None
    return model


def graph_inputs(model) -> list[tuple[str, list[int | None], str]]:
    """An ONNX graph's inputs, initializers excluded: (name, dimensions with None where dynamic, numpy
    dtype name)."""
    import onnx

    initializers = {i.name for i in model.graph.initializer}
    out = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        out.append((inp.name, [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim],
                    onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out


def _onnx_input_specs(model, shapes: dict[str, tuple[int, ...]]) -> list[TensorSpec]:
    """The graph's inputs (initializers excluded) with every dimension static: the model's own, or
    the ones ``--input-shapes`` gives."""
    inputs = []
    for name, dims, dtype in graph_inputs(model):
        if name in shapes:
            given = shapes[name]
            if len(given) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given)):
                raise TVMCError(f"--input-shapes gives {name!r} shape {list(given)}; the model declares "
                                f"{[d if d is not None else '?' for d in dims]}")
            dims = list(given)
        if any(d is None for d in dims):
            raise TVMCError(f"input {name!r} has dynamic dimensions {[d or '?' for d in dims]}; give them "
                            f"with --input-shapes \"{name}:[...]\"")
        inputs.append(TensorSpec(name, tuple(dims), dtype))
    unknown = set(shapes) - {i.name for i in inputs}
    if unknown:
        raise TVMCError(f"--input-shapes names {', '.join(sorted(unknown))}, which the model does not take; "
                        f"its inputs are {', '.join(i.name for i in inputs)}")
    return inputs


@dataclass(frozen=True)
class ImportFailure:
    """Where and why TVM's ONNX importer gave up on a graph."""

    node: str | None     # the ONNX node's name (or its first output when it has none); None: before any node
    op_type: str | None
    reason: str          # the first line of TVM's error, with its type

    def describe(self) -> str:
        where = f"at node {self.node!r} ({self.op_type})" if self.node is not None else "before converting any node"
        return f"{where}: {self.reason}"


class _ImportFailed(Exception):
    def __init__(self, failure: ImportFailure):
        super().__init__(failure.describe())
        self.failure = failure


#: TVM's converter loop (tvm.relax.frontend.onnx ONNXGraphImporter._construct_nodes) holds the node it
#: is converting in this local; the frame is on the traceback of whatever the converter raised
_CONVERTER_LOOP, _CONVERTER_NODE = "_construct_nodes", "node"
#: raised before the loop, for op types the frontend has no converter for
_UNSUPPORTED = re.compile(r"operators are not supported for frontend ONNX: (.+)")
_SHAPE_EXPR_NODE = re.compile(r"Node (\S*) cannot handle ShapeExpr inputs")


def _node_label(node) -> str:
    return node.name or (f"<unnamed, output {node.output[0]}>" if node.output else "<unnamed>")


def failing_node(err: BaseException, graph) -> tuple[str, str] | None:
    """(node label, op type) of the ONNX node TVM's importer failed on, from the converter loop's frame
    on the traceback (the innermost, for a node inside an If branch), else from the error's text."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == _CONVERTER_LOOP:
            node = frame.f_locals.get(_CONVERTER_NODE)
            if node is not None and hasattr(node, "op_type"):
                found = (_node_label(node), node.op_type)
        tb = tb.tb_next
    if found is not None:
        return found
    text = str(err)
    m = _UNSUPPORTED.search(text)
    if m:
        ops = {op.strip() for op in m.group(1).split(",")}
        node = next((n for n in graph.node if n.op_type in ops), None)
        return None if node is None else (_node_label(node), node.op_type)
    m = _SHAPE_EXPR_NODE.search(text)
    if m:
        node = next((n for n in graph.node if n.name == m.group(1)), None)
        return None if node is None else (_node_label(node), node.op_type)
    return None


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def _from_onnx(model, inputs: list[TensorSpec]):
    """``from_onnx`` with the inputs' static shapes and dtypes, or :class:`_ImportFailed` naming the node.

    The converter prints its own "Error converting operator ..." to stdout on a failure; that says
    less than the failure does, so a failed attempt's stdout is dropped (a successful one's is kept)."""
    import gc
    import io
    from contextlib import redirect_stdout

    from tvm.relax.frontend.onnx import from_onnx

    printed = io.StringIO()
    failure = None
    try:
        with redirect_stdout(printed):
            mod = from_onnx(model, shape_dict={i.name: list(i.shape) for i in inputs},
                            dtype_dict={i.name: i.dtype for i in inputs})
    except Exception as err:  # any frontend failure on a valid model
        node = failing_node(err, model.graph)
        failure = ImportFailure(*(node or (None, None)), _first_line(err))
    if failure is not None:
        # the half-built importer sits in a reference cycle with its traceback; freeing it now makes
        # TVM print its "BlockBuilder destroyed with remaining blocks" here, inside noise.quiet
        gc.collect()
        raise _ImportFailed(failure)
    sys.stdout.write(printed.getvalue())
    return mod


def _pinned(model, inputs: list[TensorSpec]):
    """A copy of ``model`` whose graph inputs declare the static shapes of ``inputs``."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    static = {i.name: i.shape for i in inputs}
    for inp in copy.graph.input:
        if inp.name in static:
            shape = inp.type.tensor_type.shape
            shape.ClearField("dim")
            for d in static[inp.name]:
                shape.dim.add().dim_value = d
    return copy


def ort_basic_copy(model, inputs: list[TensorSpec]):
    """``model`` with its input shapes pinned, after onnxruntime's basic (``ORT_ENABLE_BASIC``:
    constant folding, redundant-node elimination, ONNX-only fusions) graph optimisations. With the
    shapes static, the shape arithmetic of dynamic exports folds to constants. Written in and read
    back from a temporary directory, which is removed; raises TVMCError when onnxruntime refuses."""
    import tempfile

    import onnx

    try:
        import onnxruntime as ort
    except ImportError:
        raise TVMCError("the retry needs onnxruntime, which is not installed: "
                        "pip install 'onnxruntime>=1.18,<1.33'") from None
    pinned = _pinned(model, inputs)
    external = pinned.ByteSize() >= _PROTO_LIMIT
    with tempfile.TemporaryDirectory(prefix="energon-tvm-onnx-") as tmp:
        src, dst = Path(tmp) / "pinned.onnx", Path(tmp) / "basic.onnx"
        onnx.save_model(pinned, str(src), save_as_external_data=external, all_tensors_to_one_file=True,
                        location="pinned.onnx.data")
        del pinned
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(dst)
        options.log_severity_level = 3  # its warnings are about its own session, which is thrown away
        if external:
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             "basic.onnx.data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                             "1024")
        try:
            ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's own errors (Fail, InvalidGraph, NotImplemented...)
            raise TVMCError(f"onnxruntime could not optimise it either: {_first_line(err)}") from None
        return onnx.load(str(dst))


def _same_interface(model, copy, inputs: list[TensorSpec]) -> None:
    """The copy must take the same inputs (names, dtypes) and give the same outputs, so a package built
    from it is the package of the user's model."""
    import onnx

    seen = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type).name
            for i in copy.graph.input}
    for spec in inputs:
        if seen.get(spec.name) != spec.dtype:
            raise TVMCError(f"onnxruntime's optimised copy changed input {spec.name!r} ({spec.dtype}) to "
                            f"{seen.get(spec.name) or 'nothing'}")
    want, got = [o.name for o in model.graph.output], [o.name for o in copy.graph.output]
    if want != got:
        raise TVMCError(f"onnxruntime's optimised copy changed the outputs {want} to {got}")


#: what a user can do when neither the model nor its optimised copy imports
_WAY_OUT = ("export it again with fixed input shapes (torch.onnx.export(..., dynamo=True) imports directly), "
            "or rewrite or remove that node; docs/import.md lists what imports")


def load_onnx(path: Path, shapes: dict[str, tuple[int, ...]]):
    """An ONNX model. When TVM's importer fails on it, the import is retried once on an onnxruntime
    basic-optimised copy with the input shapes pinned (:func:`ort_basic_copy`), which keeps the model's
    inputs and outputs; a failure of both names the ONNX node and op type each stopped at."""
    model = _read_onnx(path)
    inputs = _onnx_input_specs(model, shapes)
    outputs = [o.name for o in model.graph.output]
    try:
        return _from_onnx(model, inputs), inputs, outputs
    except _ImportFailed as failed:
        first = failed.failure
    print(f"TVM's ONNX importer failed {first.describe()}; retrying on an onnxruntime basic-optimised copy "
          f"with the input shapes pinned", file=sys.stderr)
    try:
        copy = ort_basic_copy(model, inputs)
        _same_interface(model, copy, inputs)
    except TVMCError as err:
        raise TVMCError(f"TVM could not import {path.name} {first.describe()}; {err}; {_WAY_OUT}") from None
    del model
    try:
        return _from_onnx(copy, inputs), inputs, outputs
    except _ImportFailed as failed:
        second = failed.failure
    raise TVMCError(f"TVM could not import {path.name} {first.describe()}; nor its onnxruntime basic-optimised "
                    f"copy, {second.describe()}; {_WAY_OUT}")


#: a member torch.export.load would hand to AOTInductor, which extracts it and dlopens (or compiles) it
_AOTI_DIR = re.compile(r"(^|/)data/aotinductor/", re.IGNORECASE)
_NATIVE_SUFFIX = re.compile(r"\.(so(\.\d+)*|dll|dylib|pyd)$", re.IGNORECASE)
#: the first bytes of an executable or shared library: ELF, Mach-O (32/64-bit, either byte order, fat)
_NATIVE_MAGIC = {b"\x7fELF": "ELF", b"\xfe\xed\xfa\xce": "Mach-O", b"\xfe\xed\xfa\xcf": "Mach-O",
                 b"\xce\xfa\xed\xfe": "Mach-O", b"\xcf\xfa\xed\xfe": "Mach-O", b"\xca\xfe\xba\xbe": "Mach-O fat",
                 b"\xbe\xba\xfe\xca": "Mach-O fat"}
#: a PE file starts "MZ" and names its "PE\0\0" header's offset at byte 0x3c; two bytes alone are too
#: common in tensor data to refuse on, so the header is looked for within this many bytes
_PE_SEARCH_BYTES = 64 << 10


def _native_kind(member) -> tuple[str, bytes] | None:
    """(the kind of native code, its first bytes) when a zip member starts like an executable."""
    head = member.read(0x40)
    kind = _NATIVE_MAGIC.get(head[:4])
    if kind is None and head[:2] == b"MZ" and len(head) == 0x40:
        offset = int.from_bytes(head[0x3C:0x40], "little")
        if offset + 4 <= _PE_SEARCH_BYTES:
            head += member.read(max(0, offset + 4 - len(head)))
            if head[offset:offset + 4] == b"PE\0\0":
                kind = "PE"
    return None if kind is None else (kind, head[:4])


def refuse_native_code(path: Path) -> None:
    """Refuse a .pt2 archive that carries native code, before torch opens it: ``torch.export.load``
    loads every ``data/aotinductor/<model>/`` entry as an AOTInductor model (a shared library it
    dlopens), and a library runs code as it loads. Refused: any entry under ``data/aotinductor/``, any
    ``.so``/``.dll``/``.dylib``/``.pyd`` entry, and any entry whose first bytes are an ELF, Mach-O or
    PE header. The entries' names come from the zip's directory; only each entry's first bytes are
    read."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.replace("\\", "/")
                if _AOTI_DIR.search(name):
                    raise TVMCError(f"{path} carries an AOTInductor entry {info.filename!r}: torch.export.load "
                                    f"would load native code from it; energon-tvm reads exported programs only")
                if _NATIVE_SUFFIX.search(name):
                    raise TVMCError(f"{path} carries a native library {info.filename!r}; energon-tvm refuses "
                                    f"model archives with native code")
                if info.is_dir() or info.file_size == 0:
                    continue
                with archive.open(info) as member:
                    native = _native_kind(member)
                if native is not None:
                    raise TVMCError(f"{path} member {info.filename!r} is native code ({native[0]} header "
                                    f"{native[1].hex()}); energon-tvm refuses model archives with native code")
    except TVMCError:
        raise
    except Exception as err:  # BadZipFile, an encrypted or unsupported member, a truncated file...
        raise TVMCError(f"{path} is not a torch.export program (.pt2): {type(err).__name__}: "
                        f"{(str(err).splitlines() or [''])[0]}") from None


class _Unpickling(Exception):
    """Raised inside torch.export.load when the archive asks for a pickled Python object."""


@contextmanager
def _tensors_only(torch):
    """Within: every ``torch.load`` is torch's ``weights_only`` loader (tensors and plain containers,
    the loader torch provides for untrusted files), and the unpicklers that rebuild arbitrary Python
    objects refuse. ``torch.export.load`` itself falls back to full unpickling for anything its
    restricted loads reject; a model file must not be able to run code here."""
    def refuse(*_args, **_kwargs):
        raise _Unpickling()

    real_load = torch.load

    def weights_only(*args, **kwargs):
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except pickle.UnpicklingError:
            raise _Unpickling() from None

    patches = [(torch, "load", weights_only), (pickle, "loads", refuse), (torch._C, "_pickle_load_obj", refuse)]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def load_pytorch(path: Path, shapes: dict[str, tuple[int, ...]]):
    """An ``torch.export`` program saved with ``torch.export.save`` (a .pt2 archive). Its tensors are
    read; nothing in it is unpickled (:func:`_tensors_only`) and no native code in it is loaded
    (:func:`refuse_native_code`, before torch sees the file)."""
    refuse_native_code(path)
    try:
        import torch
    except ImportError:
        raise TVMCError("--model-format pytorch needs torch: pip install torch==2.13.0") from None
    try:
        with _tensors_only(torch):
            program = torch.export.load(str(path))
    except Exception as err:
        if isinstance(err, _Unpickling) or isinstance(err.__cause__ or err.__context__, _Unpickling):
            raise TVMCError(f"{path} holds pickled Python objects besides tensors; energon-tvm does not "
                            f"unpickle model files (save the program with plain tensor weights and inputs)") from None
        raise TVMCError(f"{path} is not a torch.export program (.pt2): {type(err).__name__}: {err}") from None
    from tvm.relax.frontend.torch import from_exported_program

    inputs = []
    for spec in program.graph_signature.input_specs:
        if spec.kind.name != "USER_INPUT":
            continue
        node = next(n for n in program.graph.nodes if n.name == spec.arg.name)
        val = node.meta.get("val")
        shape = tuple(int(s) for s in val.shape)
        inputs.append(TensorSpec(spec.arg.name, shapes.get(spec.arg.name, shape), str(val.dtype).replace("torch.", "")))
    try:
        mod = from_exported_program(program, keep_params_as_input=False)
    except Exception as err:
        raise TVMCError(f"TVM could not import {path.name}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    outputs = [f"output_{i}" for i in range(len(program.graph_signature.output_specs))]
    return mod, inputs, outputs


def load_model(path, model_format: str | None = None, input_shapes: str | None = None,
               verbose: int = 0) -> LoadedModel:
    """Import the model at ``path`` (ONNX, or a torch.export .pt2 program) with static input shapes.
    The import's known-harmless third-party output is dropped unless ``verbose`` (:mod:`.noise`)."""
    from .noise import quiet

    path = Path(path)
    if not path.is_file():
        raise TVMCError(f"model file {str(path)!r} does not exist")
    fmt = guess_format(path, model_format)
    shapes = parse_input_shapes(input_shapes)
    with quiet(verbose):
        mod, inputs, outputs = (load_onnx if fmt == "onnx" else load_pytorch)(path, shapes)
    return LoadedModel(mod, tuple(inputs), tuple(outputs), fmt)
