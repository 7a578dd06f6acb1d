"""The weak and strong augmentation of each modality (``encoders._augment``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from encoders import _augment as aug
from encoders.audio import LogMelFrontEnd

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n: int = 6, size: int = 32) -> torch.Tensor:
    torch.manual_seed(0)
    unit = torch.rand(n, 3, size, size)
    return (unit - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def test_a_weak_image_is_a_shift_of_the_reflected_image() -> None:
    pixels = _images()
    torch.manual_seed(1)
    out = aug.augment_image(pixels, MEAN, STD, "weak")
    pad = round(32 * aug.IMAGE_SHIFT)
    padded = F.pad(pixels, (pad, pad, pad, pad), mode="reflect")
    shifts = []
    for i in range(len(pixels)):
        found = [(y, x) for y in range(2 * pad + 1) for x in range(2 * pad + 1)
                 if torch.allclose(padded[i, :, y : y + 32, x : x + 32], out[i], atol=1e-5)]  # fmt: skip
        assert found, f"image {i} is not a shift of its input"
        shifts.append(found[0])
    assert len(set(shifts)) > 1  # each image draws its own shift


def test_a_strong_image_has_a_cutout_at_the_mean_and_differs_from_the_weak_one() -> None:
    pixels = _images()
    torch.manual_seed(1)
    out = aug.augment_image(pixels, MEAN, STD, "strong")
    for i in range(len(pixels)):
        erased = (out[i] == 0).all(0)  # Cutout fills with the mean: 0 once normalised
        rows, cols = erased.any(1).sum().item(), erased.any(0).sum().item()
        assert erased.sum() == rows * cols and rows * cols >= 0.02 * 32 * 32 * 0.9
    with pytest.raises(ValueError, match="strength"):
        aug.augment_image(pixels, MEAN, STD, "medium")


def _clips() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lengths = torch.tensor([8000, 6000, 3000, 0])
    wave = torch.randn(4, 8000) * 0.1
    wave[torch.arange(8000)[None] >= lengths[:, None]] = 0
    return {"waveform": wave, "lengths": lengths}


def test_weak_audio_keeps_padding_and_changes_loudness_within_the_gain() -> None:
    inputs = _clips()
    out = aug.augment_audio(inputs, "weak")
    assert "spec_augment" not in out
    for i, length in enumerate(inputs["lengths"].tolist()):
        assert (out["waveform"][i, length:] == 0).all()
        if length:
            ratio = out["waveform"][i, :length].norm() / inputs["waveform"][i, :length].norm()
            db = 20 * math.log10(ratio.item())
            assert abs(db) <= aug.AUDIO_GAIN_DB + 1e-4


def test_strong_audio_adds_noise_at_the_snr_and_asks_for_spec_augment() -> None:
    inputs = _clips()
    torch.manual_seed(3)
    weak = aug.augment_audio(inputs, "weak")
    torch.manual_seed(3)  # the same gain and shift, then the noise
    strong = aug.augment_audio(inputs, "strong")
    assert strong["spec_augment"].tolist() == [True] * 4
    for i, length in enumerate(inputs["lengths"].tolist()[:3]):
        signal, noisy = weak["waveform"][i, :length], strong["waveform"][i, :length]
        snr = 10 * math.log10(signal.square().sum() / (noisy - signal).square().sum())
        assert aug.AUDIO_SNR_DB[0] - 0.01 <= snr <= aug.AUDIO_SNR_DB[1] + 0.01
        assert (strong["waveform"][i, length:] == 0).all()


def test_the_front_end_masks_only_flagged_rows_in_eval_mode() -> None:
    front = LogMelFrontEnd(8000, 16, 256, 128, freq_mask=8, time_mask=16).eval()
    inputs = _clips()
    plain, _ = front(inputs["waveform"], inputs["lengths"])
    torch.manual_seed(0)
    masked, _ = front(
        inputs["waveform"], inputs["lengths"], torch.tensor([True, False, True, False])
    )
    assert torch.equal(masked[[1, 3]], plain[[1, 3]])
    assert not torch.equal(masked[0], plain[0]) and not torch.equal(masked[2], plain[2])


SPECIAL, MASK, PAD = [0, 1, 2, 3], 3, 0


def _tokens(n: int = 64, length: int = 40) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    ids = torch.randint(10, 100, (n, length))
    ids[:, 0], ids[:, 30] = 1, 2  # [CLS] ... [SEP], then padding
    ids[:, 31:] = PAD
    attention = (torch.arange(length) <= 30).long().expand(n, -1).clone()
    return {"input_ids": ids, "attention_mask": attention}


@pytest.mark.parametrize("strength, rate", [("weak", 0.1), ("strong", 0.27)])
def test_text_hides_about_the_rate_of_real_tokens_and_never_a_special_one(strength, rate) -> None:
    inputs = _tokens()
    torch.manual_seed(1)
    out = aug.augment_text(inputs, strength, SPECIAL, MASK)
    hidden = out["input_ids"] != inputs["input_ids"]
    assert (out["input_ids"][hidden] == MASK).all()
    assert not hidden[:, [0, 30]].any() and not hidden[:, 31:].any()
    assert torch.equal(out["attention_mask"], inputs["attention_mask"])
    assert abs(hidden[:, 1:30].float().mean().item() - rate) < 0.05
    if strength == "strong":  # spans: most hidden tokens have a hidden neighbour
        inner = hidden[:, 2:29]
        neighbour = hidden[:, 1:28] | hidden[:, 3:30]
        assert (inner & neighbour).sum() / inner.sum() > 0.8


def test_text_without_a_mask_token_drops_tokens_from_attention() -> None:
    inputs = _tokens()
    out = aug.augment_text(inputs, "weak", SPECIAL, None)
    assert torch.equal(out["input_ids"], inputs["input_ids"])
    dropped = (inputs["attention_mask"] == 1) & (out["attention_mask"] == 0)
    assert dropped.any() and not dropped[:, [0, 30]].any()


def test_tabular_noise_follows_each_features_std_and_strong_drops_features() -> None:
    torch.manual_seed(0)
    numerical = torch.randn(4000, 3) * torch.tensor([1.0, 10.0, 100.0])
    numerical[0, 0] = float("nan")
    inputs = {"numerical": numerical, "categorical": torch.randint(1, 4, (4000, 2))}
    std = torch.tensor([1.0, 10.0, 100.0])
    weak = aug.augment_tabular(inputs, std, "weak")
    assert math.isnan(weak["numerical"][0, 0].item())
    noise = (weak["numerical"] - numerical)[1:]
    assert torch.allclose(noise.std(0) / std, torch.full((3,), 0.1), rtol=0.1)
    assert torch.equal(weak["categorical"], inputs["categorical"])
    strong = aug.augment_tabular(inputs, std, "strong")
    dropped = strong["numerical"].isnan()[1:].float().mean().item()
    assert abs(dropped - aug.TABULAR_DROP) < 0.03
    assert abs((strong["categorical"] == 0).float().mean().item() - aug.TABULAR_DROP) < 0.03
