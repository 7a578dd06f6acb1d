"""A simple model for measuring the synthetic data: fixed features per modality + an MLP."""

from __future__ import annotations

import io
import zlib

import datasets
import numpy as np
import soundfile
import torch
from PIL import Image


def features(ds: datasets.Dataset, modality: str) -> np.ndarray:
    """Phase-invariant spectra for image and audio, hashed words for text, raw tabular."""
    ds = mm_raw(ds)
    if modality == "image":
        out = []
        for value in ds["image"]:
            gray = np.asarray(
                Image.open(io.BytesIO(value["bytes"])).convert("L").resize((16, 16)),
                dtype=np.float32,
            )
            out.append(np.log1p(np.abs(np.fft.fft2(gray - gray.mean()))).ravel())
        return np.stack(out)
    if modality == "audio":
        out = []
        for value in ds["audio"]:
            wave, _ = soundfile.read(io.BytesIO(value["bytes"]), dtype="float32")
            spectrum = np.abs(np.fft.rfft(wave, n=2048))[:512]
            out.append(np.log1p(spectrum.reshape(128, 4).sum(1)))
        return np.stack(out)
    if modality == "text":
        out = np.zeros((len(ds), 256), dtype=np.float32)
        for i, text in enumerate(ds["text"]):
            for word in text.split():
                out[i, zlib.crc32(word.encode()) % 256] += 1
        return out
    num = np.stack([np.asarray(ds[f"tab_{j}"], dtype=np.float32) for j in range(4)], 1)
    channel = np.asarray(ds["tab_channel"])
    onehot = np.stack([channel == c for c in ("web", "store", "phone")], 1).astype(np.float32)
    return np.concatenate([num, onehot], 1)


def mm_raw(ds: datasets.Dataset) -> datasets.Dataset:
    from multimodal.data.loading import raw_media

    return raw_media(ds)


def fit_and_score(
    x_train: np.ndarray, y_train, evals: list[tuple[np.ndarray, list]], seed: int = 0
) -> list[float]:
    """Train a standardised one-hidden-layer MLP; return accuracy on each evaluation set."""
    torch.manual_seed(seed)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x = torch.tensor((x_train - mean) / std)
    y = torch.tensor(y_train)
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, int(y.max()) + 1)
    )
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(400):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        return [
            (net(torch.tensor((xe - mean) / std)).argmax(1) == torch.tensor(ye))
            .float()
            .mean()
            .item()
            for xe, ye in evals
        ]
