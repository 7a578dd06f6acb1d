"""Per-modality encoders behind one contract; import registers them all."""

from ._base import AttackSurface, Encoder, EncoderOutput
from ._registry import create_encoder, list_encoders, register_encoder
from .audio import AudioCNNEncoder, AudioProcessor, AudioTimmEncoder, to_waveform
from .image import TimmImageEncoder, open_image, to_rgb
from .tabular import TabularMLPEncoder
from .text import HFTextEncoder, train_tokenizer

__all__ = [
    "AttackSurface",
    "AudioCNNEncoder",
    "AudioProcessor",
    "AudioTimmEncoder",
    "Encoder",
    "EncoderOutput",
    "HFTextEncoder",
    "TabularMLPEncoder",
    "TimmImageEncoder",
    "create_encoder",
    "list_encoders",
    "open_image",
    "register_encoder",
    "to_rgb",
    "to_waveform",
    "train_tokenizer",
]
