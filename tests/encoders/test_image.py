from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import encoders
from tests.conftest import TINY_VIT


@pytest.fixture
def enc() -> encoders.TimmImageEncoder:
    return encoders.create_encoder(
        "timm_image", model_name="vit_tiny_patch16_224", img_size=32, model_kwargs=TINY_VIT
    ).eval()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_every_mode_and_source_becomes_a_normalised_tensor(enc) -> None:
    palette = Image.new("P", (10, 12))
    palette.info["transparency"] = 0
    values = [
        Image.new("RGB", (40, 30), (255, 0, 0)),
        Image.new("L", (20, 20), 100),
        Image.new("RGBA", (20, 20), (0, 0, 255, 0)),
        palette,
        Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)),
        _png(Image.new("RGB", (9, 9), (0, 255, 0))),
        {"bytes": _png(Image.new("L", (9, 9))), "path": None},
        np.zeros((5, 6, 3), dtype=np.uint8),
    ]
    pixels = enc.processor(values)["pixel_values"]
    assert pixels.shape == (len(values), 3, 32, 32) and torch.isfinite(pixels).all()
    # A fully transparent image composites to black, a white 16-bit one stays white.
    assert torch.allclose(pixels[2], pixels[7], atol=1e-6)
    assert pixels[4].min() > pixels[0].max() - 1e-6


def test_cnn_map_becomes_hw_tokens() -> None:
    enc = encoders.create_encoder("timm_image", model_name="resnet10t", img_size=64).eval()
    out = enc(enc.processor([Image.new("RGB", (64, 64))]))
    assert out.tokens.shape == (1, 4, enc.out_dim)  # 64 / 32 = 2 -> 2 x 2 tokens


def test_corrupt_bytes_name_the_sample(enc) -> None:
    with pytest.raises(ValueError, match="image sample 1"):
        enc.processor([Image.new("RGB", (8, 8)), b"not an image"])
