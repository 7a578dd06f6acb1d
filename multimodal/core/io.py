"""Atomic writes: a file or folder on disk is either the old one or the complete new one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def written_by_a_save(folder: Path) -> bool:
    """Whether ``folder`` is a folder of weights a save wrote: every file in it is listed in
    its ``checksums.json`` (or is a model card), so replacing it loses nothing else."""
    record = folder / CHECKSUMS_NAME
    if not record.is_file():
        return False
    try:
        listed = json.loads(record.read_text())["sha256"]
    except (ValueError, KeyError):
        return False
    files = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return all(f in listed or f in (CHECKSUMS_NAME, *UNLISTED_OK) for f in files)


@contextlib.contextmanager
def atomic_dir(
    target: str | os.PathLike[str], replaceable: Callable[[Path], bool] = written_by_a_save
) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    Files already in ``target`` that the new content does not rewrite are dropped, so a
    save never mixes old and new files; so a ``target`` that holds anything is replaced
    only if ``replaceable`` says it is an earlier save (by default: every file it holds is
    listed in its checksums), and is otherwise refused before anything is written. On
    error the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    if (
        target.exists()
        and (not target.is_dir() or any(target.iterdir()))
        and not replaceable(target)
    ):
        kept = sorted(p.name for p in target.iterdir())[:6] if target.is_dir() else [target.name]
        raise FileExistsError(
            f"{target} holds files a save there would delete ({', '.join(kept)}); save to a new or "
            "empty folder"
        )
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
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


# Files a folder of weights may hold beside its checksums: the model card describes the
# weights and is updated after them; a hub download's git attributes and cache notes.
UNLISTED_OK = ("README.md", ".gitattributes")


def _unlisted(actual: dict[str, str], expected: dict[str, str]) -> list[str]:
    return sorted(k for k in set(actual) - set(expected)
                  if k not in UNLISTED_OK and not k.startswith(".cache/"))  # fmt: skip


def verify_checkpoint(path: Path, allow_unlisted: bool = False) -> None:
    """Raise ``CorruptCheckpointError`` unless every file of a checkpoint or saved model
    matches its recorded checksum and every file it holds is recorded (a load may read
    it: an unlisted weights or config file could change the answers unseen). With
    ``allow_unlisted``, unlisted files load with a warning."""
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
    unlisted = _unlisted(actual, expected)
    if unlisted and not allow_unlisted:
        raise UnverifiedFolderError(
            f"{path} holds files its {CHECKSUMS_NAME} does not list: {unlisted[:8]}; they cannot "
            "be checked against what was saved. Save the folder again, or load it anyway with "
            "allow_unverified=True (--allow-unverified)"
        )
    if unlisted:
        logger.warning("loading %s with files its %s does not list, UNVERIFIED: %s", path,
                       CHECKSUMS_NAME, unlisted[:8])  # fmt: skip


def verify_folder(path: Path, allow_unverified: bool = False) -> None:
    """The rule for every folder of weights the toolkit loads (a saved model, an export):
    its files must match ``checksums.json``, which must list every file but the model card.
    A folder without one, or with files it does not list, is refused, unless the caller
    passes ``allow_unverified``; then it loads with a warning."""
    if (path / CHECKSUMS_NAME).is_file():
        verify_checkpoint(path, allow_unlisted=allow_unverified)
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
