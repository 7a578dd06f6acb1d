"""Test-time corruptions of raw modality values at severities 1-5 (0 is the clean value)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from encoders import open_image, to_rgb, to_waveform

# Severity 1..5 -> parameter of each corruption.
LEVELS = {
    ("image", "noise"): (0.04, 0.08, 0.12, 0.18, 0.26),  # Gaussian std on [0, 1] pixels
    ("image", "blur"): (0.5, 1.0, 1.5, 2.0, 3.0),  # Gaussian blur radius in pixels
    ("image", "jpeg"): (80, 60, 40, 20, 10),  # JPEG quality
    ("audio", "noise"): (30, 20, 10, 5, 0),  # SNR in dB
    ("audio", "gain"): (-6, -12, -18, -24, -30),  # gain in dB
    ("audio", "shift"): (0.1, 0.2, 0.3, 0.4, 0.5),  # circular time shift, fraction of the clip
    ("text", "typos"): (0.02, 0.05, 0.1, 0.15, 0.2),  # per-character swap/drop probability
    ("text", "word_dropout"): (0.1, 0.2, 0.3, 0.4, 0.5),  # per-word drop probability
    ("tabular", "noise"): (0.1, 0.25, 0.5, 0.75, 1.0),  # Gaussian noise, times |value| (or 1)
    ("tabular", "missing"): (0.1, 0.2, 0.3, 0.4, 0.5),  # per-value probability of becoming missing
}
CORRUPTIONS = {
    kind: sorted(c for k, c in LEVELS if k == kind)
    for kind in ("image", "audio", "text", "tabular")
}


def _image(value: Any, corruption: str, level: float, rng: np.random.Generator) -> Image.Image:
    image = to_rgb(open_image(value))
    if corruption == "blur":
        return image.filter(ImageFilter.GaussianBlur(level))
    if corruption == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(level))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    noisy = np.clip(pixels + rng.normal(0, level, pixels.shape), 0, 1)
    return Image.fromarray((noisy * 255).round().astype(np.uint8))


def _audio(value: Any, corruption: str, level: float, rng: np.random.Generator) -> dict[str, Any]:
    wave, rate = to_waveform(value, 16000)
    wave = wave.numpy()
    if corruption == "gain":
        wave = wave * 10 ** (level / 20)
    elif corruption == "shift":
        wave = np.roll(wave, int(level * wave.shape[-1]), axis=-1)
    else:
        power = float(np.mean(wave**2)) or 1e-12
        wave = wave + rng.normal(0, math.sqrt(power / 10 ** (level / 10)), wave.shape)
    return {"array": wave.astype(np.float32), "sampling_rate": rate}


def _text(value: str, corruption: str, level: float, rng: np.random.Generator) -> str:
    if corruption == "word_dropout":
        words = [w for w in value.split() if rng.random() >= level]
        return " ".join(words)
    chars = list(value)
    out: list[str] = []
    i = 0
    while i < len(chars):
        r = rng.random()
        if r < level / 2 and i + 1 < len(chars):  # swap with the next character
            out += [chars[i + 1], chars[i]]
            i += 2
            continue
        if r >= level / 2 and r < level:  # drop it
            i += 1
            continue
        out.append(chars[i])
        i += 1
    return "".join(out)


def _tabular(
    value: dict[str, Any], corruption: str, level: float, rng: np.random.Generator
) -> dict[str, Any]:
    out = {}
    for column, x in value.items():
        if corruption == "missing":
            out[column] = None if rng.random() < level else x
        elif (
            isinstance(x, (int, float))
            and not isinstance(x, bool)
            and x is not None
            and math.isfinite(x)
        ):
            out[column] = float(x) + float(rng.normal(0, level * max(abs(float(x)), 1.0)))
        else:
            out[column] = x  # categories are left alone by noise
    return out


_APPLY: dict[str, Callable[..., Any]] = {
    "image": _image,
    "audio": _audio,
    "text": _text,
    "tabular": _tabular,
}


def corrupt(kind: str, value: Any, corruption: str, severity: int, rng: np.random.Generator) -> Any:
    """``value`` (a raw value of modality kind ``kind``) with ``corruption`` at ``severity`` 0-5."""
    if (kind, corruption) not in LEVELS:
        raise ValueError(
            f"unknown corruption {corruption!r} for {kind}; choose from {CORRUPTIONS.get(kind, [])}"
        )
    if not 0 <= severity <= 5:
        raise ValueError(f"severity must be in 0..5, got {severity}")
    if severity == 0 or value is None:
        return value
    return _APPLY[kind](value, corruption, LEVELS[(kind, corruption)][severity - 1], rng)
