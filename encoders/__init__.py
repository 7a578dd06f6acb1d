"""Per-modality encoders behind one contract. The registry lists every built-in encoder
without importing it; a module is imported when one of its names is first used."""

from __future__ import annotations

import importlib
from typing import Any

from ._registry import create_encoder as create_encoder
from ._registry import list_encoders as list_encoders
from ._registry import processor_from_config as processor_from_config
from ._registry import register_encoder as register_encoder
from ._registry import register_processor as register_processor

# Public name -> the module that defines it.
_LAZY = {
    **dict.fromkeys(("AttackSurface", "Encoder", "EncoderOutput", "Processor"), "._base"),
    **dict.fromkeys(
        ("AudioCNNEncoder", "AudioProcessor", "AudioTimmEncoder", "to_waveform"), ".audio"
    ),
    **dict.fromkeys(("ImageProcessor", "TimmImageEncoder", "open_image", "to_rgb"), ".image"),
    **dict.fromkeys(("TabularMLPEncoder", "TabularProcessor"), ".tabular"),
    **dict.fromkeys(("HFTextEncoder", "TextProcessor", "train_tokenizer"), ".text"),
}

__all__ = sorted([*_LAZY, "create_encoder", "list_encoders", "processor_from_config",
                  "register_encoder", "register_processor"])  # fmt: skip


def __getattr__(name: str) -> Any:
    """Public names resolve on first use, so importing the package (to list its registry,
    say) loads no torch model code."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
