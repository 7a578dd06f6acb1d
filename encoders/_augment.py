"""Weak and strong augmentation of each modality's processed inputs (``train.augment`` and
FixMatch's two views), applied to a batch as the encoder receives it.

The policies follow FixMatch (Sohn et al. 2020): weak is a small shift, strong is
RandAugment plus Cutout for images; the other modalities take the same two levels:

- image: weak = random translation up to 12.5% (reflect padding; no flip, which a digit or
  a text in the image does not survive); strong = weak + timm's RandAugment (2 ops,
  magnitude uniform in [0, 10], each applied with probability 0.5: ``rand-m10-n2-mstd101``,
  on FixMatch's pool of ops)
  + Cutout (timm's ``RandomErasing``, one patch of 2-25% of the area, filled with the mean);
- audio: weak = gain of +-6 dB and a circular time shift of up to 10% of the clip;
  strong = weak + white noise at 10-30 dB SNR (torchaudio) + SpecAugment in the encoder's
  front end (its frequency and time masks, applied even when the encoder is frozen);
- text: weak = token dropout, each real token hidden with probability 0.1; strong = span
  masking, spans of 3 tokens starting with probability 0.1 (about 30% hidden). Hidden
  means the tokenizer's mask token, or left out of attention when it has none; special
  tokens are never hidden;
- tabular: Gaussian noise of 0.1 (weak) or 0.3 (strong) times each numerical feature's
  fitted standard deviation; strong also drops each feature with probability 0.2 to the
  encoder's missing-value path.

Random draws come from the global generators (torch, and Python's and NumPy's for timm's
PIL ops), which ``fit`` seeds and every checkpoint saves, so an augmented run is repeatable and
resumes exactly, as dropout does.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

STRENGTHS = ("weak", "strong")

IMAGE_SHIFT = 0.125
RAND_AUGMENT = "rand-m10-n2-mstd101"
# FixMatch's pool of ops, by timm's names (its posterize keeps 4-8 bits; timm's default
# "Posterize" may keep 0, which Pillow refuses).
RAND_AUGMENT_OPS = [
    "AutoContrast", "Brightness", "Color", "Contrast", "Equalize", "PosterizeOriginal", "Rotate",
    "Sharpness", "ShearX", "ShearY", "Solarize", "TranslateXRel", "TranslateYRel",
]  # fmt: skip
CUTOUT_AREA = (0.02, 0.25)
AUDIO_GAIN_DB = 6.0
AUDIO_SHIFT = 0.1
AUDIO_SNR_DB = (10.0, 30.0)
TEXT_DROPOUT = 0.1
TEXT_SPAN, TEXT_SPAN_START = 3, 0.1
TABULAR_NOISE = {"weak": 0.1, "strong": 0.3}
TABULAR_DROP = 0.2


def check_strength(strength: str) -> None:
    if strength not in STRENGTHS:
        raise ValueError(f"augmentation strength must be one of {STRENGTHS}, got {strength!r}")


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


# image -----------------------------------------------------------------------------------


def augment_image(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float], strength: str
) -> torch.Tensor:
    """[B, C, H, W] pixels normalised with ``mean``/``std`` -> the same, augmented."""
    check_strength(strength)
    m = torch.tensor(mean, device=pixels.device, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, device=pixels.device, dtype=torch.float32)[:, None, None]
    unit = (pixels.float() * s + m).clamp(0, 1)
    unit = _translate(unit, IMAGE_SHIFT)
    if strength == "strong":
        unit = _rand_augment(unit, mean)
    out = (unit - m) / s
    if strength == "strong":
        out = _cutout(out)
    return out.to(pixels.dtype)


def _translate(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each image shifted by up to ``fraction`` of its size, the border reflected in."""
    _, _, h, w = images.shape
    ph, pw = round(h * fraction), round(w * fraction)
    if ph == 0 and pw == 0:
        return images
    padded = F.pad(images, (pw, pw, ph, ph), mode="reflect")
    dy = torch.randint(0, 2 * ph + 1, (len(images),)).tolist()
    dx = torch.randint(0, 2 * pw + 1, (len(images),)).tolist()
    return torch.stack(
        [padded[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(zip(dy, dx, strict=True))]
    )


@functools.cache
def _rand_augment_transform(height: int, fill: tuple[int, ...]) -> Any:
    """timm's RandAugment for images of ``height`` rows filled with ``fill`` (built once per
    size: it holds no random state, every draw happens when it is called)."""
    from timm.data.auto_augment import rand_augment_transform

    return rand_augment_transform(
        RAND_AUGMENT,
        {"translate_const": int(height * 0.45), "img_mean": fill if len(fill) == 3 else fill[0]},
        transforms=RAND_AUGMENT_OPS,
    )


def _rand_augment(images: torch.Tensor, mean: Sequence[float]) -> torch.Tensor:
    """timm's RandAugment on each image (its ops take PIL images: 8 bits per channel)."""
    _, c, h, _ = images.shape
    fill = tuple(round(255 * v) for v in mean)
    transform = _rand_augment_transform(h, fill if c == 3 else fill[:1])
    out = []
    for image in images.detach().cpu():
        array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        pil = Image.fromarray(array[..., 0] if c == 1 else array)
        back = np.asarray(transform(pil), dtype=np.float32) / 255
        out.append(torch.from_numpy(back.reshape(h, -1, c)).permute(2, 0, 1))
    return torch.stack(out).to(images.device)


@functools.cache
def _eraser(device: str) -> Any:
    """timm's RandomErasing as Cutout: one patch filled with the mean (built once)."""
    from timm.data.random_erasing import RandomErasing

    return RandomErasing(
        probability=1.0, min_area=CUTOUT_AREA[0], max_area=CUTOUT_AREA[1], mode="const",
        max_count=1, device=device,
    )  # fmt: skip


def _cutout(normalised: torch.Tensor) -> torch.Tensor:
    return _eraser(str(normalised.device))(normalised.clone())


# audio -----------------------------------------------------------------------------------


def augment_audio(inputs: dict[str, torch.Tensor], strength: str) -> dict[str, torch.Tensor]:
    """``waveform`` [B, L] and ``lengths`` [B] -> gain, time shift, and (strong) noise and
    a ``spec_augment`` flag per row that the front end reads."""
    import torchaudio.functional as AF

    check_strength(strength)
    wave, lengths = inputs["waveform"].float(), inputs["lengths"]
    n, device = len(wave), wave.device
    gains = _uniform(n, -AUDIO_GAIN_DB, AUDIO_GAIN_DB, device)
    wave = torch.stack([AF.gain(w, float(g)) for w, g in zip(wave, gains, strict=True)])
    wave = _shift_within(wave, lengths, AUDIO_SHIFT)
    out = {**inputs, "waveform": wave.to(inputs["waveform"].dtype)}
    if strength == "strong":
        noise = torch.randn_like(wave)
        snr = _uniform(n, *AUDIO_SNR_DB, device)
        noisy = AF.add_noise(wave, noise, snr, lengths.to(device))
        valid = torch.arange(wave.shape[-1], device=device)[None] < lengths.to(device)[:, None]
        out["waveform"] = torch.where(valid, noisy, wave).to(inputs["waveform"].dtype)
        out["spec_augment"] = torch.ones(n, dtype=torch.bool, device=device)
    return out


def _shift_within(wave: torch.Tensor, lengths: torch.Tensor, fraction: float) -> torch.Tensor:
    """Each clip rolled by up to ``fraction`` of its own length, inside that length."""
    out = wave.clone()
    for i, length in enumerate(lengths.tolist()):
        most = int(length * fraction)
        if length > 0 and most > 0:
            shift = int(torch.randint(-most, most + 1, ()).item())
            out[i, :length] = torch.roll(wave[i, :length], shift)
    return out


# text ------------------------------------------------------------------------------------


def augment_text(
    inputs: dict[str, torch.Tensor], strength: str, special_ids: Sequence[int],
    mask_id: int | None,
) -> dict[str, torch.Tensor]:  # fmt: skip
    """``input_ids``/``attention_mask`` [B, T] -> tokens hidden: replaced by ``mask_id``, or
    left out of attention when it is None; ``special_ids`` are never hidden."""
    check_strength(strength)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    maskable = attention.bool() & ~torch.isin(
        ids, torch.tensor(list(special_ids), device=ids.device)
    )
    if strength == "weak":
        hidden = torch.rand(ids.shape, device=ids.device) < TEXT_DROPOUT
    else:
        starts = (torch.rand(ids.shape, device=ids.device) < TEXT_SPAN_START).float()
        spans = F.conv1d(F.pad(starts[:, None], (TEXT_SPAN - 1, 0)), torch.ones(1, 1, TEXT_SPAN))
        hidden = spans[:, 0] > 0
    hidden &= maskable
    out = dict(inputs)
    if mask_id is not None:
        out["input_ids"] = torch.where(hidden, torch.full_like(ids, mask_id), ids)
    else:
        out["attention_mask"] = attention.masked_fill(hidden, 0)
    return out


# tabular ---------------------------------------------------------------------------------


def augment_tabular(
    inputs: dict[str, torch.Tensor], std: torch.Tensor, strength: str
) -> dict[str, torch.Tensor]:
    """``numerical`` [B, n] (NaN: missing) and ``categorical`` [B, c] (0: missing) ->
    noise scaled by each feature's ``std``, and (strong) features dropped to missing."""
    check_strength(strength)
    numerical, categorical = inputs["numerical"], inputs["categorical"]
    noise = torch.randn_like(numerical) * std.to(numerical) * TABULAR_NOISE[strength]
    numerical = numerical + noise  # NaN stays NaN: missing stays missing
    if strength == "strong":
        numerical = numerical.masked_fill(torch.rand_like(numerical) < TABULAR_DROP, float("nan"))
        drop = torch.rand(categorical.shape, device=categorical.device) < TABULAR_DROP
        categorical = categorical.masked_fill(drop, 0)
    return {**inputs, "numerical": numerical, "categorical": categorical}
