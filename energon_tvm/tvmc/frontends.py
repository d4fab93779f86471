"""Model loading: an ONNX file or an exported PyTorch program, to a Relax module with static shapes.

``--input-shapes "name:[1,128],mask:[1,128]"`` fixes dynamic dimensions; every input must end up
static (Energon programs are compiled for one shape).
"""

from __future__ import annotations

import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import TVMCError

FORMATS = ("onnx", "pytorch")
_SHAPE_ITEM = re.compile(r"\s*([^:,\[\]\s][^:\[\]]*?)\s*:\s*\[([^\]]*)\]\s*")


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


def parse_input_shapes(text: str | None) -> dict[str, tuple[int, ...]]:
    """``"input_ids:[1,128],attention_mask:[1,128]"`` -> {name: shape}."""
    if not text:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}
    pos = 0
    while pos < len(text):
        m = _SHAPE_ITEM.match(text, pos)
        if not m:
            raise TVMCError(f"bad --input-shapes {text!r} at character {pos}: expected name:[d0,d1,...] items "
                            f"separated by commas")
        name, dims = m.group(1), m.group(2)
        try:
            shape = tuple(int(d) for d in dims.split(",") if d.strip())
        except ValueError:
            raise TVMCError(f"bad --input-shapes: dimensions of {name!r} must be integers, got [{dims}]") from None
        if any(d < 1 for d in shape):
            raise TVMCError(f"bad --input-shapes: {name!r} has a dimension below 1: {list(shape)}")
        shapes[name] = shape
        pos = m.end()
        if pos < len(text):
            if text[pos] != ",":
                raise TVMCError(f"bad --input-shapes {text!r} at character {pos}: expected ','")
            pos += 1
    return shapes


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


def load_onnx(path: Path, shapes: dict[str, tuple[int, ...]]):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises DecodeError, ValueError, OSError... for a bad file
        raise TVMCError(f"{path} is not a readable ONNX model: {type(err).__name__}: {err}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as err:
        raise TVMCError(f"{path} is not a valid ONNX model: {err}") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if inp.name in shapes:
            given = shapes[inp.name]
            if len(given) != len(dims) or any(d is not None and d != g for d, g in zip(dims, given)):
                raise TVMCError(f"--input-shapes gives {inp.name!r} shape {list(given)}; the model declares "
                                f"{[d if d is not None else '?' for d in dims]}")
            dims = list(given)
        if any(d is None for d in dims):
            raise TVMCError(f"input {inp.name!r} has dynamic dimensions {[d or '?' for d in dims]}; give them "
                            f"with --input-shapes \"{inp.name}:[...]\"")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        inputs.append(TensorSpec(inp.name, tuple(dims), dtype))
    unknown = set(shapes) - {i.name for i in inputs}
    if unknown:
        raise TVMCError(f"--input-shapes names {', '.join(sorted(unknown))}, which the model does not take; "
                        f"its inputs are {', '.join(i.name for i in inputs)}")
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(model, shape_dict={i.name: list(i.shape) for i in inputs},
                        dtype_dict={i.name: i.dtype for i in inputs})
    except Exception as err:  # a frontend failure on a valid model: name the operator if TVM does
        raise TVMCError(f"TVM could not import {path.name}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    outputs = [o.name for o in model.graph.output]
    return mod, inputs, outputs


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


def load_model(path, model_format: str | None = None, input_shapes: str | None = None) -> LoadedModel:
    """Import the model at ``path`` (ONNX, or a torch.export .pt2 program) with static input shapes."""
    path = Path(path)
    if not path.is_file():
        raise TVMCError(f"model file {str(path)!r} does not exist")
    fmt = guess_format(path, model_format)
    shapes = parse_input_shapes(input_shapes)
    mod, inputs, outputs = (load_onnx if fmt == "onnx" else load_pytorch)(path, shapes)
    return LoadedModel(mod, tuple(inputs), tuple(outputs), fmt)
