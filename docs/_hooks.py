"""mkdocs hook: the benchmark plots under ``benchmarks/results/`` are part of the site, at
the same paths, so the pages show the committed figures without copies in ``docs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def on_files(files: Files, config: Any) -> Files:
    for png in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        relative = png.relative_to(ROOT).as_posix()
        files.append(File(relative, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
