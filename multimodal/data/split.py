"""``Split``: one view of a split whether its rows are held (a ``datasets.Dataset``) or
streamed (a ``datasets.IterableDataset``), so callers ask it and do not branch on which."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets

from .streaming import PROCESSOR_ROWS, head, is_streaming, scan


@dataclass(frozen=True)
class Split:
    """``rows``: a held split; ``streamed``: whether it is read as a stream, once per pass."""

    rows: Any

    @property
    def streamed(self) -> bool:
        return is_streaming(self.rows)

    @property
    def known_size(self) -> int | None:
        """The number of rows when it is known without reading them (None for a stream)."""
        return None if self.streamed else len(self.rows)

    def size(self) -> int:
        """The number of rows (a stream is read once to count them)."""
        return scan(self.rows)[0] if self.streamed else len(self.rows)

    def size_and_domains(self) -> tuple[int, list[str]]:
        """Both, from one pass over a stream."""
        return scan(self.rows) if self.streamed else (len(self.rows), self.domains())

    def domains(self) -> list[str]:
        """The sorted distinct values of the ``domain`` column (a stream is read once)."""
        return scan(self.rows)[1] if self.streamed else sorted(set(self.column("domain")))

    def column(self, name: str) -> list[Any]:
        """A held split's column as a list, read as one Arrow column (iterating a
        ``datasets`` column formats each row in Python: tens of times slower)."""
        return self.require_held(f"column {name!r}").with_format("arrow")[name].to_pylist()

    def require_held(self, needs: str) -> datasets.Dataset:
        """The held rows; a stream raises, saying what ``needs`` them."""
        if self.streamed:
            raise ValueError(f"{needs} needs the whole split in memory; this split is streamed")
        return self.rows

    def row_domains(self) -> list[str]:
        """Each row's domain in row order (empty for a stream, which is not read here)."""
        return [] if self.streamed else list(self.rows["domain"])

    def first(self, n: int = PROCESSOR_ROWS) -> datasets.Dataset:
        """The first ``n`` rows held in memory (a held split: all of it, as it is)."""
        return head(self.rows, n) if self.streamed else self.rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)
