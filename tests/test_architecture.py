"""Layering rules that keep the engine usable headless."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "studio", "shiboken6")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_engine_sources_import_no_qt():
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & set(FORBIDDEN)) for p in (ROOT / "engine").rglob("*.py")}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"engine imports Qt/studio: {bad}"


def test_importing_the_whole_engine_loads_no_qt():
    code = (
        "import sys, pkgutil, importlib, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_engine_never_imports_studio_and_studio_may_import_engine():
    for p in (ROOT / "engine").rglob("*.py"):
        assert "studio" not in _imports(p), p


def test_no_undefined_or_unused_names():
    """pyflakes over the product, its benchmarks and its tests: an undefined name is a crash waiting for its
    branch; an unused import or variable is usually a check that was meant and not made."""
    import io

    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter

    out, err = io.StringIO(), io.StringIO()
    n = checkRecursive([str(ROOT / d) for d in ("engine", "studio", "bench", "tests")], Reporter(out, err))
    assert n == 0, out.getvalue() + err.getvalue()
