"""Old import paths, kept working for a deprecation period with a ``DeprecationWarning`` that
names the new one. The flat modules of the first release moved into layers (ARCHITECTURE.md);
a script written against them still runs, and says what to change."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

_CONFIG = "multimodal.experiments.config"
_ENGINE = "multimodal.engine"
_PROVENANCE = "multimodal.core.provenance"
# old module -> {name: the module that defines it now}
MOVED: dict[str, dict[str, str]] = {
    "multimodal.config": {
        **dict.fromkeys(("validate", "apply_overrides", "load_run_config", "model_config",
                         "train_config"), _CONFIG),
        **dict.fromkeys(("parse_value", "config_hash"), "multimodal.core.config"),
    },
    "multimodal.model": dict.fromkeys(
        ("ModelOutput", "move_to", "MultimodalModel", "load_config", "build_model"),
        "multimodal.modeling.model",
    ),
    "multimodal.heads": {"Head": "multimodal.modeling.heads"},
    "multimodal.training": {
        **dict.fromkeys(("TrainConfig", "FitData", "FitResult"), f"{_ENGINE}.config"),
        **dict.fromkeys(("evaluate", "predict_loader"), f"{_ENGINE}.evaluate"),
        "fit": f"{_ENGINE}.training", "build_optimizer": f"{_ENGINE}.optim",
        "checkpoints": f"{_ENGINE}.checkpoint", "NonFiniteTrainingError": f"{_ENGINE}.step",
        **dict.fromkeys(("environment", "resident_memory_mb", "importlib_available"), _PROVENANCE),
    },
    "multimodal.experiments.summary": dict.fromkeys(
        ("summarize", "comparisons", "correct", "unimodal", "grid_keys", "ROW_KEYS", "STAT_KEYS",
         "METRICS", "EXTRA_METRICS", "UTIL", "ONLY"),
        "multimodal.experiments.bench.stats",
    ),
}  # fmt: skip


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old module names and gives modules that look names up where they live now."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: Any) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        names = MOVED[module.__name__]
        homes = sorted(set(names.values()))
        top = set(importlib.import_module("multimodal").__all__)
        also = " (or from multimodal)" if any(n in top for n in names) else ""
        warnings.warn(
            f"{module.__name__} moved; import from {', '.join(homes)}{also} instead",
            DeprecationWarning,
            stacklevel=3,
        )

        def __getattr__(name: str) -> Any:
            if name not in names:
                raise AttributeError(
                    f"{module.__name__} had no {name!r} that still exists; see ARCHITECTURE.md"
                )
            return getattr(importlib.import_module(names[name]), name)

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__all__ = sorted(names)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
