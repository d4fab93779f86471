"""A partitioned model survives ``export_library`` + ``tvm.runtime.load_module`` in a fresh process:
the per-call blobs travel inside the library, and the bridge only has to be registered again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from harness import Built, from_onnx, host_target, run_collected
from onnx_graphs import attention_model

from energon_tvm.relax import partition_for_energon

LOADER = textwrap.dedent("""
    import sys

    sys.modules["torch"] = None  # tvm_ffi imports torch if it can: 2 s this process does not need
    import numpy as np
    import tvm
    from tvm import relax

    lib_path, inputs_path, out_path = sys.argv[1:]
    lib = tvm.runtime.load_module(lib_path)
    try:
        relax.VirtualMachine(lib, tvm.cpu())
        print("created without the bridge")
    except Exception as err:  # the library needs the Python-side bridge
        print("missing bridge:", "energon.run_attention" in str(err))

    from energon_tvm.executor import Runner
    from energon_tvm.relax import virtual_machine

    run = Runner()
    vm = virtual_machine(lib, run)
    inputs = np.load(inputs_path)
    out = vm["main"](*[tvm.runtime.tensor(inputs[name]) for name in inputs.files])
    np.save(out_path, out.numpy())
    print("calls:", len(run.calls), run.calls[0].site, run.calls[0].workload.seq_q)
""")


def test_export_load_and_fresh_registration(tmp_path, default_params):
    import tvm

    model, inputs = attention_model("eager")
    pmod, report = partition_for_energon(from_onnx(model), params=default_params)
    executable = tvm.compile(pmod, target=host_target())
    expected, _ = run_collected(Built(executable), inputs)

    lib_path = tmp_path / "attention.so"
    executable.export_library(str(lib_path))
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = tmp_path / "load.py"
    script.write_text(LOADER)
    proc = subprocess.run([sys.executable, str(script), str(lib_path), str(tmp_path / "inputs.npz"),
                           str(tmp_path / "out.npy")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "missing bridge: True" in proc.stdout
    assert f"calls: 1 {report[0].site} 8" in proc.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
