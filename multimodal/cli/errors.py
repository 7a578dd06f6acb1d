"""Which exceptions are the user's to fix, and the one line that says so.

A wrong value, a missing or corrupt file, broken YAML or a full disk is told in one line
and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

# OSErrors a user fixes by freeing space or choosing another folder.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch's zip writer reports a full disk as a RuntimeError of its own.
_TORCH_WRITE_FAILED = ("inline_container", "PytorchStreamWriter failed", "unexpected pos")


def user_error(err: BaseException) -> str | None:
    """One line for an error the user can fix, or None for a bug."""
    from ..core.io import CorruptCheckpointError
    from ..core.run_folder import RunLockedError

    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        return _disk_full(getattr(err, "filename", None))
    if isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED):
        return _disk_full(None, str(err).splitlines()[0])
    if isinstance(err, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                        PermissionError)):  # fmt: skip
        return _one_line(str(err) or f"{type(err).__name__}: {err.filename}")
    if isinstance(err, (ValueError, TypeError, CorruptCheckpointError, RunLockedError)):
        return _one_line(str(err))
    if type(err).__name__ in (
        "ExportMismatchError",
        "HubUnreachable",
    ):  # not imported per error  # deploy.export; not imported for every error
        return _one_line(str(err))
    if isinstance(err, OSError) and "huggingface.co" in str(err):
        # transformers' own words, then what to do here: the hub is out of reach
        return _one_line(
            str(err).splitlines()[0] + " (HF_HUB_OFFLINE=1 reads only the local cache)"
        )
    return None


def _disk_full(filename: str | None, detail: str | None = None) -> str:
    folder = Path(filename).parent if filename else Path.cwd()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free / 2**20
    what = f"writing {filename}" if filename else "writing a file"
    cause = f" ({detail})" if detail else ""
    return (f"{what} failed: the disk is full or over quota{cause}; {free:,.0f} MiB free in "
            f"{folder}. Free some space or write elsewhere (--output-dir)")  # fmt: skip


def _one_line(message: str) -> str:
    """The message on one line: further lines (a library's hints) joined with '; '."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(lines) if lines else "(no message)"
