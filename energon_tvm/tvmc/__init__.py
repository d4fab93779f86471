"""``tvmc`` for Energon: the command line and the Python API it is a thin shell over.

    result = compile_model("model.onnx", target="energon, llvm")   # tvmc compile
    write(result, "model.tar", dump_code="isa")
    run = run_package("model.tar", fill_mode="random")             # tvmc run
    tune_model("model.onnx", "records.jsonl", trials=64)           # tvmc tune

Importing this package does not import TVM; the functions do, when called.
"""

from .compiler import CompileResult, compile_model, write
from .errors import PackageError, TVMCError
from .package import read_package
from .runner import RunResult, run_package
from .tuning import TuneModelResult, tune_model

__all__ = ["CompileResult", "PackageError", "RunResult", "TVMCError", "TuneModelResult", "compile_model",
           "read_package", "run_package", "tune_model", "write"]
