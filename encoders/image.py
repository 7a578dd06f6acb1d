"""Image encoder: any timm model; tokens from ``forward_features``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_model_data_config
from torch import nn

from ._augment import augment_image
from ._base import AttackSurface, Encoder, EncoderOutput, Processor, tokens_from_features
from ._registry import register_encoder, register_processor
from ._weights import align_state_dict, read_state_dict

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# Larger images are refused before they are decoded: a header can claim any size, and
# decoding 100k x 100k pixels would exhaust memory. Raise it for large scans if needed.
MAX_IMAGE_PIXELS = 64_000_000
# A thin image passes the pixel limit but not these: resizing its short side to the model's
# size scales the long side by as much (1 x 600,000 pixels became 2.3 GB in a resize).
MAX_IMAGE_SIDE = 16_384
MAX_ASPECT_RATIO = 100.0


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"image of {width} x {height} pixels is over the limit of {MAX_IMAGE_PIXELS:,} pixels "
            "(encoders.image.MAX_IMAGE_PIXELS)"
        )
    if max(width, height) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"image of {width} x {height} pixels has a side over the limit of "
            f"{MAX_IMAGE_SIDE:,} (encoders.image.MAX_IMAGE_SIDE)"
        )
    if min(width, height) > 0 and max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of {width} x {height} pixels is more than {MAX_ASPECT_RATIO:g} times longer "
            "than wide (encoders.image.MAX_ASPECT_RATIO)"
        )


def open_image(value: Any) -> Image.Image:
    """A PIL image from a PIL image, a path, encoded bytes, a ``datasets`` Image dict or an array."""
    if isinstance(value, Image.Image):
        _check_size(*value.size)
        return value
    if isinstance(value, dict):  # undecoded ``datasets.Image``: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(bytes(value)))
            _check_size(*image.size)  # from the header, before decoding
            image.load()  # decode now so corrupt bytes fail here, not later
            return image
        if isinstance(value, (str, Path)):
            with Image.open(value) as image:
                _check_size(*image.size)
                image.load()
                return image.copy()
    except Image.DecompressionBombError as err:  # PIL's own, larger limit, hit in open()
        raise ValueError(f"image is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({err})") from err
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
        if value.ndim == 3 and value.shape[0] in (1, 3, 4):  # CHW -> HWC
            value = value.transpose(1, 2, 0)
    if isinstance(value, np.ndarray):
        array = value
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.dtype.kind == "f":  # floats are taken to be in [0, 1]
            array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255).round().astype(np.uint8)
        elif array.dtype == np.uint16:
            array = (array // 257).astype(np.uint8)
        elif array.dtype != np.uint8:
            raise ValueError(
                f"expected an image array of uint8, uint16 or float, got {array.dtype}"
            )
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
            raise ValueError(
                f"expected an image array of shape HxW, HxWx3 or HxWx4, got {array.shape}"
            )
        _check_size(array.shape[1], array.shape[0])
        return Image.fromarray(array)
    raise TypeError(f"expected a PIL image, path, bytes or array, got {type(value).__name__}")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode: 16-bit is scaled to 8-bit, alpha is composited over black."""
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode != "F" and array.max(initial=0) > 255 else 255.0
        if image.mode == "F":
            top = 1.0 if array.max(initial=0) <= 1.0 else 255.0
        image = Image.fromarray((np.clip(array / top, 0, 1) * 255).round().astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


@register_processor("image")
class ImageProcessor(Processor):
    """Raw images (PIL, arrays, file paths, bytes) -> ``pixel_values`` [B, 3, H, W] through
    timm's eval transform for ``data_config`` (input_size, interpolation, mean, std, crop)."""

    modality = "image"

    def __init__(self, data_config: dict[str, Any]) -> None:
        self.data_config = dict(data_config)
        self.transform = create_transform(**self.data_config, is_training=False)

    def is_missing(self, value: Any) -> bool:
        """None, or an image or array with no pixels."""
        if isinstance(value, Image.Image):
            return value.width == 0 or value.height == 0
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return value.size == 0 if isinstance(value, np.ndarray) else value.numel() == 0
        return value is None

    def __call__(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        _, height, width = self.data_config["input_size"]
        pixels = torch.zeros(len(values), 3, height, width)
        for i, value in enumerate(values):
            if value is None:
                continue
            try:
                image = open_image(value)
                if image.width == 0 or image.height == 0:
                    raise ValueError(f"the image is {image.width} x {image.height} pixels")
                pixels[i] = self.transform(to_rgb(image))
            except (OSError, ValueError, TypeError, Image.DecompressionBombError) as err:
                raise ValueError(f"image sample {i}: cannot read it as an image ({err})") from err
        return {"pixel_values": pixels}

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {"data_config": {k: list(v) if isinstance(v, tuple) else v
                                for k, v in self.data_config.items()}}  # fmt: skip

    @classmethod
    def from_config(cls, config: dict[str, Any], save_dir: Path) -> ImageProcessor:
        data_config = {k: tuple(v) if isinstance(v, list) else v
                       for k, v in config["data_config"].items()}  # fmt: skip
        return cls(data_config)


class TimmBackbone:
    """What encoders built on a timm model (``self.model``) share: its blocks, first to
    last, and the keys that rebuild it offline (weights come from the state dict)."""

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]

    def layer_blocks(self) -> list[nn.Module]:
        return timm_blocks(self.model)

    def timm_config(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "pretrained": False,
            "model_kwargs": self.model_kwargs,
        }


@register_encoder("timm_image")
class TimmImageEncoder(TimmBackbone, Encoder):
    """Any timm model as an image encoder.

    The processor is timm's eval transform for the model (``resolve_model_data_config`` +
    ``create_transform``), with ``img_size`` overriding the input size where given.
    Weights: ``pretrained`` from the hub, or ``checkpoint_path`` from a local file (a state
    dict in safetensors or torch format, or ``package:NAME/path`` inside an installed package).
    tokens: [B, H*W, C] for CNN maps, [B, N, C] for ViTs (prefix tokens included);
    mask: all True (padding does not exist for images).
    """

    modality = "image"

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool = False,
        img_size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.img_size = img_size
        self.model_kwargs = dict(model_kwargs or {})
        self.model = create_timm_backbone(
            model_name, pretrained, img_size, self.model_kwargs, checkpoint_path
        )
        self.out_dim = int(self.model.num_features)
        data_config = resolve_model_data_config(self.model)
        if img_size is not None:
            data_config["input_size"] = (3, img_size, img_size)
            data_config["crop_pct"] = 1.0
        self.processor = ImageProcessor(data_config)

    @property
    def data_config(self) -> dict[str, Any]:
        return self.processor.data_config

    def attack_surface(self, inputs: dict[str, torch.Tensor]) -> AttackSurface:
        """Normalised pixels, in units of [0, 1] pixel intensity, kept inside the valid range."""
        pixels = inputs["pixel_values"]
        mean = torch.tensor(self.data_config["mean"], device=pixels.device)[:, None, None]
        std = torch.tensor(self.data_config["std"], device=pixels.device)[:, None, None]
        mask = torch.ones_like(pixels, dtype=torch.bool)
        return AttackSurface("pixel_values", pixels, 1 / std, mask, -mean / std, (1 - mean) / std)

    def augment(self, inputs: dict[str, torch.Tensor], strength: str) -> dict[str, torch.Tensor]:
        """Shift (weak); shift, RandAugment and Cutout (strong): ``encoders._augment``."""
        pixels = augment_image(
            inputs["pixel_values"], self.data_config["mean"], self.data_config["std"], strength
        )
        return {**inputs, "pixel_values": pixels}

    channels_last: bool = False

    def use_channels_last(self) -> bool:
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True
        return True

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        pixels = inputs["pixel_values"]
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        tokens = tokens_from_features(self.model.forward_features(pixels))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return EncoderOutput(tokens, mask)

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        return {**self.timm_config(), "img_size": self.img_size}


def create_timm_backbone(
    model_name: str,
    pretrained: bool,
    img_size: Any,
    model_kwargs: dict[str, Any],
    checkpoint_path: str | None = None,
) -> nn.Module:
    """A headless timm model; ``img_size`` goes to models that take it (ViTs) and not to CNNs.

    ``checkpoint_path`` (a file, or ``package:NAME/path`` inside an installed package) loads
    local weights through timm's own loader, so the classifier is dropped and the stem is
    adapted to ``in_chans`` as for hub weights; nothing is downloaded.
    """
    kwargs = {"pretrained": pretrained, "num_classes": 0, **model_kwargs}
    if checkpoint_path is not None:
        kwargs["pretrained"] = True
        kwargs["pretrained_cfg_overlay"] = {
            "state_dict": _timm_state_dict(model_name, checkpoint_path, model_kwargs)
        }
    if img_size is None:
        return timm.create_model(model_name, **kwargs)
    try:
        return timm.create_model(model_name, img_size=img_size, **kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        return timm.create_model(model_name, **kwargs)


def _timm_state_dict(
    model_name: str, checkpoint_path: str, model_kwargs: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The checkpoint under the key names of ``model_name`` as timm builds it for its own
    weights (3 input channels, its default classifier), built on the meta device."""
    kwargs = {k: v for k, v in model_kwargs.items() if k not in ("in_chans", "num_classes")}
    with torch.device("meta"):
        reference = timm.create_model(model_name, pretrained=False, **kwargs).state_dict()
    return align_state_dict(read_state_dict(checkpoint_path), reference, checkpoint_path)


def timm_blocks(model: nn.Module) -> list[nn.Module]:
    """A timm model's stages or blocks, first to last (``blocks``, ``stages`` or ``layer1..4``)."""
    for name in ("blocks", "stages", "layers"):
        seq = getattr(model, name, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 0:
            return list(seq)
    layers = [getattr(model, f"layer{i}") for i in range(1, 8) if hasattr(model, f"layer{i}")]
    return layers
