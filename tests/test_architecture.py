"""The layer contracts of ARCHITECTURE.md hold, and they catch an import that goes up."""

from __future__ import annotations

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
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # a lower layer importing a higher one
        ("multimodal/core/io.py", "from multimodal.engine import training",
         "Layers: imports only go down BROKEN"),
        # a cycle between two siblings (model.py imports heads.py)
        ("multimodal/modeling/heads.py", "from multimodal.modeling import model",
         "No import cycles between sibling packages BROKEN"),
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
