"""What the cross-command stores hold (``TRANSFERFUSE_CACHE``: trained source models in
``source/``, scratch scores in ``scratch/``) and how to prune them, as ``pip cache`` and
``hf cache`` do for theirs: ``multimodal cache`` lists them, ``--clear`` removes entries,
with ``--older-than`` only those unused for that many days (a read marks an entry used).
Nothing else under the folder is touched.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CACHE_ENV = "TRANSFERFUSE_CACHE"
KINDS = ("source", "scratch")


@dataclass
class Entry:
    """One stored fit: its files (``<key>.json`` and, for a source model, its tensors)."""

    kind: str
    key: str
    files: list[Path] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files if p.exists())

    @property
    def used(self) -> float:
        """When it was last written or read (its JSON's modification time)."""
        summary = [p for p in self.files if p.suffix == ".json"] or self.files
        return max(p.stat().st_mtime for p in summary)


def root() -> Path:
    """``TRANSFERFUSE_CACHE``, default ``~/.cache/transferfuse``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "transferfuse")


def entries(kinds: Iterable[str] = KINDS) -> list[Entry]:
    """The stored entries of ``kinds``, a key's files together (an interrupted atomic write's
    temporary file counts with its key)."""
    found: dict[tuple[str, str], Entry] = {}
    for kind in kinds:
        folder = root() / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file():
                key = path.name.lstrip(".").split(".", 1)[0]  # a temporary's: .<name>.<random>
                found.setdefault((kind, key), Entry(kind, key)).files.append(path)
    return list(found.values())


def prune(chosen: Iterable[Entry]) -> tuple[int, int]:
    """Remove ``chosen`` entries' files: (entries, bytes) removed."""
    count = size = 0
    for entry in chosen:
        size += entry.size
        for path in entry.files:
            path.unlink(missing_ok=True)
        count += 1
    return count, size


def older_than(found: Iterable[Entry], days: float | None) -> list[Entry]:
    """The entries unused for more than ``days`` days (all with None)."""
    if days is None:
        return list(found)
    cutoff = time.time() - days * 86400
    return [e for e in found if e.used < cutoff]


def mark_used(path: Path) -> None:
    """An entry read: its last use is now (what ``--older-than`` goes by)."""
    try:
        os.utime(path)
    except OSError:  # a read-only store still serves its entries
        pass
