"""A thread-local setting switched for the length of a ``with`` block."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def thread_setting(
    local: threading.local, name: str, value: Any, default: Any = None
) -> Iterator[None]:
    """``local.<name>`` is ``value`` inside; after, what it was (``default`` if unset)."""
    previous = getattr(local, name, default)
    setattr(local, name, value)
    try:
        yield
    finally:
        setattr(local, name, previous)
