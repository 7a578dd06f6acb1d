from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile
import torch

import encoders
from tests.conftest import TINY_AUDIO


@pytest.fixture
def enc() -> encoders.AudioCNNEncoder:
    return encoders.create_encoder("audio_cnn", channels=[4, 8], **TINY_AUDIO).eval()


def test_processor_mixes_to_mono_resamples_and_reports_lengths(enc) -> None:
    stereo_44k = {"array": np.ones((2, 22050), dtype=np.float32), "sampling_rate": 44100}  # 0.5 s
    mono_8k = {"array": np.ones(4000, dtype=np.float32), "sampling_rate": 8000}  # 0.5 s
    long_16k = (np.ones(32000, dtype=np.float32), 16000)  # 2 s, cropped to max_seconds=1
    out = enc.processor([stereo_44k, mono_8k, long_16k])
    assert out["lengths"].tolist() == [4000, 4000, 8000]
    assert out["waveform"].shape == (3, 8000)
    assert enc.processor([None])["waveform"].shape == (1, TINY_AUDIO["n_fft"] // 2 + 1)
    assert torch.all(out["waveform"][0, 4000:] == 0), "padding is zeros"


def test_channel_layout_and_integer_pcm() -> None:
    wave, rate = encoders.to_waveform((np.full((1000, 2), 16384, dtype=np.int16), 8000), 16000)
    assert wave.shape == (2, 1000) and rate == 8000
    assert torch.allclose(wave, torch.full_like(wave, 0.5))


def test_encoded_wav_bytes_are_decoded(enc) -> None:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(16000, dtype=np.float32), 16000, format="WAV")
    out = enc.processor([{"bytes": buf.getvalue(), "path": None}])
    assert out["lengths"].tolist() == [8000]  # resampled 16 kHz -> 8 kHz


def test_zero_length_is_missing_and_nan_is_an_error(enc) -> None:
    assert enc.is_missing({"array": np.zeros(0, dtype=np.float32), "sampling_rate": 8000})
    assert not enc.is_missing({"array": np.zeros(10, dtype=np.float32), "sampling_rate": 8000})
    bad = {"array": np.array([0.0, np.nan], dtype=np.float32), "sampling_rate": 8000}
    with pytest.raises(ValueError, match="audio sample 1: .*NaN"):
        enc.processor([np.zeros(10, dtype=np.float32), bad])


def test_mask_marks_padded_frames_false(enc) -> None:
    short = np.random.default_rng(0).standard_normal(2000).astype(np.float32)
    full = np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    out = enc(enc.processor([short, full]))
    assert out.mask[1].all()
    assert 0 < out.mask[0].sum() < out.mask.shape[1]
    assert not out.mask[0, -1]


def test_loudness_of_a_neighbour_does_not_change_a_clip(enc) -> None:
    quiet = 0.001 * np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    loud = 10 * np.random.default_rng(1).standard_normal(8000).astype(np.float32)
    together = enc(enc.processor([quiet, loud])).tokens[0]
    alone = enc(enc.processor([quiet])).tokens[0]
    assert torch.allclose(together, alone, atol=1e-5)


def test_spec_augment_only_in_training(enc) -> None:
    inputs = enc.processor([np.random.default_rng(0).standard_normal(8000).astype(np.float32)] * 2)
    front = enc.front_end
    front.eval()
    a, _ = front(inputs["waveform"], inputs["lengths"])
    b, _ = front(inputs["waveform"], inputs["lengths"])
    assert torch.equal(a, b)
    front.train()
    c, _ = front(inputs["waveform"], inputs["lengths"])
    assert not torch.equal(a, c)
