"""Per-modality encoders behind one contract; import registers them all."""

from ._base import AttackSurface, Encoder, EncoderOutput, Processor
from ._registry import (
    create_encoder,
    list_encoders,
    processor_from_config,
    register_encoder,
    register_processor,
)
from .audio import AudioCNNEncoder, AudioProcessor, AudioTimmEncoder, to_waveform
from .image import ImageProcessor, TimmImageEncoder, open_image, to_rgb
from .tabular import TabularMLPEncoder, TabularProcessor
from .text import HFTextEncoder, TextProcessor, train_tokenizer

__all__ = [
    "AttackSurface",
    "AudioCNNEncoder",
    "AudioProcessor",
    "AudioTimmEncoder",
    "Encoder",
    "EncoderOutput",
    "HFTextEncoder",
    "ImageProcessor",
    "Processor",
    "TabularMLPEncoder",
    "TabularProcessor",
    "TextProcessor",
    "TimmImageEncoder",
    "create_encoder",
    "list_encoders",
    "open_image",
    "processor_from_config",
    "register_encoder",
    "register_processor",
    "to_rgb",
    "to_waveform",
    "train_tokenizer",
]
