"""The documentation: the site builds without a warning, and the public API is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import multimodal

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300


@pytest.mark.slow
def test_the_site_builds_strictly(tmp_path) -> None:
    """Broken links, missing pages and unresolvable API entries fail ``--strict``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "index.html").exists()


def test_every_public_name_is_in_the_api_reference_with_a_docstring() -> None:
    api = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^::: multimodal\.(\w+)$", api, flags=re.M))
    assert set(multimodal.__all__) <= documented
    for name in multimodal.__all__:
        assert getattr(multimodal, name).__doc__, f"multimodal.{name} has no docstring"


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme):
        assert (ROOT / target).exists(), f"README links to a missing {target}"
