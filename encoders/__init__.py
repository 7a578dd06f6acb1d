"""Per-modality encoders behind one contract. The registry lists every built-in encoder
without importing it; a module is imported when one of its names is first used."""

from __future__ import annotations

from multimodal.core.registry import lazy_attributes

from ._registry import ENCODERS as ENCODERS
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

__all__ = sorted([*_LAZY, "ENCODERS", "create_encoder", "list_encoders", "processor_from_config",
                  "register_encoder", "register_processor"])  # fmt: skip


# Public names resolve on first use: importing the package loads no torch model code.
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
