"""Property-based tests: every raw value ends in a correct tensor, the configured error, or
the missing-modality path; never a crash, a hang or silent garbage.

Run with ``--hypothesis-show-statistics`` to see how often each outcome occurred."""

from __future__ import annotations

import io
import math
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from encoders import create_encoder
from tests.conftest import TEXTS, TINY_AUDIO, TINY_BERT

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")), deadline=5000, suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)  # fmt: skip
# Unexpected exception types are failures: only these are the configured error path.
EXPECTED_ERRORS = (ValueError, TypeError)


@pytest.fixture(scope="module")
def encoders():
    return {
        "image": create_encoder("timm_image", model_name="resnet10t", img_size=16),
        "audio": create_encoder("audio_cnn", channels=[4], **TINY_AUDIO),
        "text": create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS * 4, max_length=24),
        "tabular": create_encoder(
            "tabular_mlp", numerical=["x", "y"], categorical={"c": ["a", "b"]}, dim=8
        ),
    }


def outcome(encoder, value, message: str) -> dict[str, torch.Tensor] | None:
    """Process one value; returns the tensors, or None for the missing or error path."""
    if encoder.is_missing(value):
        event("missing")
        return None
    try:
        out = encoder.process([value])
    except EXPECTED_ERRORS as err:
        assert message in str(err), f"error without the sample: {err}"
        event(f"error: {type(err).__name__}")
        return None
    event("tensor")
    for key, tensor in out.items():
        assert tensor.shape[0] == 1, key
        if tensor.is_floating_point() and key != "numerical":
            assert torch.isfinite(tensor).all(), f"{key} holds NaN or inf"
    with torch.no_grad():
        tokens = encoder.eval()(out).tokens
    assert torch.isfinite(tokens).all()
    return out


def _png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "I", "I;16", "F", "CMYK", "YCbCr", "HSV", "LAB"]
images = st.one_of(
    st.binary(max_size=512),  # random bytes
    st.builds(lambda mode, w, h: Image.new(mode, (w, h)), st.sampled_from(MODES), st.integers(0, 48), st.integers(0, 48)),
    st.builds(lambda w, h: _png(w, h), st.integers(0, 200_000), st.integers(0, 200_000)),  # huge headers
    st.builds(
        lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
        st.lists(st.integers(0, 40), min_size=1, max_size=4).map(tuple),
        st.sampled_from(["uint8", "uint16", "float32", "float64", "int64", "bool"]),
        st.sampled_from([0, 1, 0.5, 300, -5, float("nan"), float("inf")]),
    ),
    st.sampled_from([None, 3, "not/a/file.png", {"bytes": None, "path": None}, [1, 2, 3]]),
)  # fmt: skip


def _encode(image: Image.Image, fmt: str) -> bytes | Image.Image:
    try:
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        return buf.getvalue()
    except (OSError, ValueError, KeyError):
        return image  # a mode this format cannot store: the PIL image itself


@FUZZ
@given(value=images, fmt=st.sampled_from([None, "PNG", "JPEG", "BMP", "TIFF", "WEBP"]))
def test_images(encoders, value, fmt) -> None:
    if isinstance(value, Image.Image) and fmt is not None and value.width and value.height:
        value = _encode(value, fmt)
    out = outcome(encoders["image"], value, "image sample 0")
    if out is not None:
        assert out["pixel_values"].shape == (1, 3, 16, 16)


def test_huge_image_header_is_refused_before_decoding(encoders) -> None:
    with pytest.raises(ValueError, match="image sample 0: .*over the limit of 64,000,000 pixels"):
        encoders["image"].process([_png(100_000, 100_000)])
    with pytest.raises(
        ValueError, match="image sample 0: .*9000 x 9000 pixels is over the limit of 64,000,000"
    ):
        encoders["image"].process([_png(9000, 9000)])


samples = st.floats(allow_nan=True, allow_infinity=True, width=32)
audio = st.one_of(
    st.builds(
        lambda n, c, rate, fill, scale: {"array": (np.random.default_rng(n).normal(0, scale, (c, n)) if fill is None
                                                   else np.full((c, n), fill)).astype(np.float32),
                                         "sampling_rate": rate},
        st.integers(0, 20_000), st.integers(1, 3), st.sampled_from([1, 100, 8000, 11025, 44100, 96000, 0, -8000]),
        st.one_of(st.none(), samples), st.sampled_from([1e-6, 0.1, 1.0, 1e4]),
    ),
    st.builds(lambda n, dtype: np.zeros(n, dtype=dtype), st.integers(0, 5000), st.sampled_from(["int16", "int32", "uint8", "float64", "int64", "complex64"])),
    st.binary(max_size=512),  # random "encoded" bytes
    st.builds(lambda shape: np.zeros(shape, np.float32), st.lists(st.integers(0, 6), min_size=3, max_size=4).map(tuple)),
    st.sampled_from([None, "missing.wav", {"foo": 1}, 7, (np.zeros(10), 0)]),
)  # fmt: skip


@FUZZ
@given(value=audio)
def test_audio(encoders, value) -> None:
    out = outcome(encoders["audio"], value, "audio sample 0")
    if out is not None:
        max_len = encoders["audio"].audio_processor.max_length
        assert (
            0
            < out["waveform"].shape[1]
            <= max(max_len, encoders["audio"].audio_processor.min_length)
        )
        assert out["lengths"][0] <= max_len


def test_audio_with_nan_is_an_error_not_silent_zeros(encoders) -> None:
    wave = np.zeros(4000, np.float32)
    wave[10] = np.nan
    with pytest.raises(ValueError, match="audio sample 0: audio contains NaN or inf"):
        encoders["audio"].process([{"array": wave, "sampling_rate": 8000}])


texts = st.one_of(
    st.text(max_size=300),  # any unicode, control characters and surrogate-free code points
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=50),  # control characters only
    st.builds(lambda n, c: c * n, st.integers(1000, 200_000), st.sampled_from(["a", "é ", "\u200b", "🙂", "word "])),
    st.sampled_from([None, 5, b"bytes", ["list"], 3.5]),
)  # fmt: skip


@FUZZ
@given(value=texts)
def test_text(encoders, value) -> None:
    out = outcome(encoders["text"], value, "text sample 0")
    if out is not None:
        assert 0 < out["input_ids"].shape[1] <= 24  # long texts are truncated
        assert out["attention_mask"][0].sum() >= 1


cells = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10), st.binary(max_size=5), st.lists(st.integers(), max_size=2), st.just(np.float32(2.5)),
    st.just(np.int64(3)), st.just(float("nan")), st.just(complex(1, 2)),
)  # fmt: skip
rows = st.one_of(
    st.fixed_dictionaries({"x": cells, "y": cells, "c": cells}),
    st.dictionaries(st.sampled_from(["x", "y", "c", "z"]), cells, max_size=4),
    st.sampled_from([None, 3, "x=1", [1.0, 2.0]]),
)  # fmt: skip


@FUZZ
@given(value=rows)
def test_tabular(encoders, value) -> None:
    out = outcome(encoders["tabular"], value, "tabular sample 0")
    if out is not None:
        numerical = out["numerical"][0]
        for j, column in enumerate(["x", "y"]):
            raw = value.get(column) if isinstance(value, dict) else None
            if (
                isinstance(raw, (int, float))
                and not isinstance(raw, bool)
                and math.isfinite(float(raw))
            ):
                assert numerical[j].item() == pytest.approx(
                    float(np.float32(raw)), rel=1e-6, nan_ok=True
                )
            elif raw is None or (isinstance(raw, float) and not math.isfinite(raw)):
                assert math.isnan(numerical[j].item())  # missing values take the missing token
        assert 0 <= out["categorical"][0, 0].item() <= 2
