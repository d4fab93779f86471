"""Packaging and layering: importing energon-tvm's packages never imports TVM."""

import subprocess
import sys
import textwrap


def test_imports_do_not_pull_in_tvm():
    code = textwrap.dedent("""
        import sys
        import energon_tvm, energon_tvm.isa, energon_tvm.schedules, energon_tvm.runtime_sim
        import energon_tvm.mpmrf
        import pkgutil, importlib
        for pkg in (energon_tvm.isa, energon_tvm.schedules, energon_tvm.runtime_sim):
            for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(mod.name)
        bad = sorted(m for m in sys.modules if m == "tvm" or m.startswith("tvm."))
        assert not bad, bad
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_subpackages_are_installed_under_energon_tvm():
    import energon_tvm.isa
    import energon_tvm.runtime_sim
    import energon_tvm.schedules

    assert energon_tvm.isa.load_config("edge").name == "edge"
    assert energon_tvm.schedules.__name__ == "energon_tvm.schedules"
    assert energon_tvm.runtime_sim.__name__ == "energon_tvm.runtime_sim"
