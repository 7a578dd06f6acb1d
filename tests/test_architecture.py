"""The layer contracts of ARCHITECTURE.md hold, and they catch an import that goes up."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("multimodal", "encoders", "fusion")

pytest.importorskip("importlinter", reason="import-linter is in the dev extra")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"
    return subprocess.run([sys.executable, "-c", script], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _copy_tree(tmp_path: Path) -> Path:
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_layer_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # a lower layer importing a higher one
        ("multimodal/core/io.py", "from multimodal.engine import training",
         "Layers: imports only go down BROKEN"),
        # a cycle between two siblings (model.py imports heads.py)
        ("multimodal/modeling/heads.py", "from multimodal.modeling import model",
         "No import cycles between sibling packages BROKEN"),
        # another package's private module
        ("multimodal/analysis/drift.py", "from fusion._base import masked_mean",
         "No private module of encoders or fusion imported from outside BROKEN"),
    ],
)  # fmt: skip
def test_an_import_against_the_architecture_breaks_a_contract(
    tmp_path: Path, module: str, line: str, broken: str
) -> None:
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{line}  # noqa: E402\n")
    result = _lint(root)
    assert result.returncode != 0
    assert broken in result.stdout


def _private_imports(path: Path) -> list[str]:
    """``from M import _name`` and imports of an ``_module``, where M lies outside the
    importing file's own package (a sibling's private names are its package's business)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    package = ".".join(parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside this package, or a parent's
                base = parts[: len(parts) - node.level]
                module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            else:
                module = node.module or ""
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            module, names = "", [a.name for a in node.names]
        else:
            continue
        home = module if module.startswith(package + ".") or module == package else None
        private_module = any(
            p.startswith("_") and not p.startswith("__") for p in module.split(".")
        )
        if (
            private_module
            and not (package and module.startswith(package + "._"))
            and module != "__future__"
        ):
            found.append(f"{path.relative_to(ROOT)}: from {module} import ...")
        for name in names:
            last = name.split(".")[-1]
            if last.startswith("_") and not last.startswith("__") and home is None:
                if not (package == "benchmarks" and "." not in module):  # a sibling script
                    found.append(f"{path.relative_to(ROOT)}: {name} from {module or name}")
    return found


def test_no_module_imports_another_packages_private_names() -> None:
    files = [p for d in (*PACKAGES, "benchmarks") for p in (ROOT / d).rglob("*.py")]
    found = [hit for path in files for hit in _private_imports(path)]
    assert not found, "\n".join(found)


MODULE_LINES, FUNCTION_LINES = 500, 80


def test_no_module_or_function_is_too_long_to_read() -> None:
    """ARCHITECTURE.md's sizes: a module over 500 lines or a function over 80 is split."""
    long = []
    for path in (p for d in PACKAGES for p in (ROOT / d).rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > FUNCTION_LINES:
                    long.append(
                        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines"
                    )
    assert not long, "\n".join(long)
