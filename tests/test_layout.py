"""Packaging and layering: importing energon-tvm's packages never imports TVM, and dependencies point
the way DESIGN.md section 3 draws them."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path


def test_imports_do_not_pull_in_tvm():
    code = textwrap.dedent("""
        import sys
        import energon_tvm, energon_tvm.isa, energon_tvm.schedules, energon_tvm.runtime_sim, energon_tvm.tuner
        import energon_tvm.mpmrf
        import pkgutil, importlib
        for pkg in (energon_tvm.isa, energon_tvm.schedules, energon_tvm.runtime_sim, energon_tvm.tuner):
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


# -- the dependency direction of DESIGN.md section 3, read statically ---------------------------------

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("isa", "schedules", "runtime_sim", "tuner", "relax", "tvmc")
# what each lower layer may import (besides the standard library and third-party packages other than TVM)
MAY_IMPORT = {
    "isa": {"isa"},
    "runtime_sim": {"isa", "runtime_sim"},
    "schedules": {"isa", "schedules"},
}
# the tuner sits above both, below the TVM integration: TVM takes seconds to import
TUNER_MUST_NOT_IMPORT = {"tvm", "relax", "tvmc"}


def _source_packages() -> dict[str, Path]:
    """Installed package name -> source directory, as pyproject.toml's package-dir maps them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: ROOT / path for pkg, path in setup["package-dir"].items()}


def _layer(module: str) -> str | None:
    """The layer an absolute module name belongs to: one of LAYERS, "top" (the rest of energon_tvm),
    "tvm", or None (anything else)."""
    parts = module.split(".")
    if parts[0] == "tvm":
        return "tvm"
    if parts[0] in ("isa", "schedules", "runtime_sim"):  # a bare name: wrong anyway (the PyPI package)
        return parts[0]
    if parts[0] != "energon_tvm":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "top"


def _imports(path: Path, module: str, is_package: bool):
    """(line, absolute name) of every import in a file, relative ones resolved; ``from a import b`` gives
    a.b (b may be a module)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                assert node.level <= len(package), f"{path}:{node.lineno} imports beyond the top package"
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def _module_imports() -> dict[str, list[tuple[str, int, str]]]:
    """layer -> (file, line, imported layer) of every import of energon_tvm's modules."""
    out: dict[str, list] = {}
    for pkg, src in _source_packages().items():
        for path in sorted(src.rglob("*.py")):
            rel = path.relative_to(src).with_suffix("").parts
            is_package = rel[-1] == "__init__"
            module = ".".join((pkg, *rel[:-1]) if is_package else (pkg, *rel))
            layer = _layer(module)
            for line, name in _imports(path, module, is_package):
                target = _layer(name)
                if target is not None:
                    out.setdefault(layer, []).append((str(path.relative_to(ROOT)), line, target))
    return out


def test_dependencies_point_one_way():
    imports = _module_imports()
    # the scan sees every layer and resolves relative imports (else the checks below would pass vacuously)
    assert {"isa", "schedules", "runtime_sim", "tuner"} <= set(imports)
    assert {"schedules", "runtime_sim"} <= {target for _, _, target in imports["tuner"]}
    bad = [f"{path}:{line}: {layer} imports {target}"
           for layer, allowed in MAY_IMPORT.items() for path, line, target in imports[layer] if target not in allowed]
    bad += [f"{path}:{line}: tuner imports {target}"
            for path, line, target in imports["tuner"] if target in TUNER_MUST_NOT_IMPORT]
    assert not bad, "\n".join(bad)
