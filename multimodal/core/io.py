"""Atomic writes: a file or folder on disk is either the old one or the complete new one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    Files already in ``target`` that the new content does not rewrite are dropped, so a
    save never mixes old and new files. On error the temporary folder is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


CHECKSUMS_NAME = "checksums.json"


def file_checksums(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` except the checksums file."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS_NAME):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        out[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return out


def verify_checkpoint(path: Path) -> None:
    """Raise ``CorruptCheckpointError`` unless every file of a checkpoint or saved model
    matches its recorded checksum."""
    record = path / CHECKSUMS_NAME
    if not record.is_file():
        raise CorruptCheckpointError(f"checkpoint {path} has no {CHECKSUMS_NAME}: it is incomplete")
    try:
        expected = json.loads(record.read_text())["sha256"]
    except (ValueError, KeyError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {path}: unreadable {CHECKSUMS_NAME} ({err})"
        ) from err
    actual = file_checksums(path)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if missing or changed:
        raise CorruptCheckpointError(
            f"checkpoint {path} is corrupt: missing files {missing}, checksum mismatch in {changed}"
        )


def verify_folder(path: Path, allow_unverified: bool = False) -> None:
    """The rule for every folder of weights the toolkit loads (a saved model, an export):
    its files must match ``checksums.json``. A folder without one is refused, unless the
    caller passes ``allow_unverified``; then it loads with a warning."""
    if (path / CHECKSUMS_NAME).is_file():
        verify_checkpoint(path)
        return
    if not allow_unverified:
        raise UnverifiedFolderError(
            f"{path} has no {CHECKSUMS_NAME}, so its weights cannot be checked against what "
            "was saved; save it again with save_pretrained/export, or load it anyway with "
            "allow_unverified=True (--allow-unverified)"
        )
    logger.warning("loading %s UNVERIFIED: it has no %s", path, CHECKSUMS_NAME)


def write_checksums(folder: Path) -> None:
    """``checksums.json`` over every file in ``folder``; written last, so its presence marks
    the folder complete."""
    write_json_atomic(folder / CHECKSUMS_NAME, {"sha256": file_checksums(folder)})


class CorruptCheckpointError(RuntimeError):
    """A checkpoint whose files are missing, truncated or altered."""


class UnverifiedFolderError(CorruptCheckpointError):
    """A folder of weights with no checksums to verify it by."""
