"""Tiny models and raw samples shared by the tests."""

from __future__ import annotations

import os

# Under pytest-xdist every worker would start as many OpenMP threads as there are cores, and
# on 2 cores two workers' threads spin against each other (the fast tier took 2.9x as long).
# One thread per worker, set before torch loads; processes the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Scratch scores a `multimodal transfer` stores for later commands go to a folder of this
# session, never the user's ~/.cache.
if "TRANSFERFUSE_CACHE" not in os.environ:
    import tempfile

    os.environ["TRANSFERFUSE_CACHE"] = tempfile.mkdtemp(prefix="transferfuse-test-cache-")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

TEXTS = [
    "a bright red circle on a calm blue background",
    "low humming tone with a little noise",
    "striped texture and a warm palette",
    "quiet recording of a high whistle",
]

TINY_BERT = {
    "model_type": "bert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "vocab_size": 120,
    "max_position_embeddings": 64,
}
TINY_VIT = {"patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2}
TINY_AUDIO = {
    "sample_rate": 8000,
    "max_seconds": 1.0,
    "n_mels": 16,
    "n_fft": 256,
    "hop_length": 128,
}

# One tiny configuration per registered encoder; the contract test fails for an encoder
# that is registered without one here.
TINY_ENCODERS: dict[str, dict[str, Any]] = {
    "hf_text": {"config": TINY_BERT, "train_texts": TEXTS * 4},
    "timm_image": {"model_name": "vit_tiny_patch16_224", "img_size": 32, "model_kwargs": TINY_VIT},
    "audio_cnn": {"channels": [4, 8], **TINY_AUDIO},
    "audio_timm": {
        "model_name": "resnet10t",
        "model_kwargs": {"zero_init_last": False},
        **TINY_AUDIO,
    },
    "tabular_mlp": {
        "numerical": ["x", "y"],
        "categorical": {"color": ["red", "blue"]},
        "dim": 8,
        "hidden_dim": 16,
    },
}


def raw_values(modality: str, n: int, seed: int = 0) -> list[Any]:
    """``n`` raw values of a modality, varied in size, mode, rate and channels."""
    rng = np.random.default_rng(seed)
    if modality == "text":
        return [TEXTS[i % len(TEXTS)] for i in range(n)]
    if modality == "image":
        modes = ["RGB", "L", "RGBA"]
        return [
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).convert(
                modes[i % 3]
            )
            for i in range(n)
        ]
    if modality == "audio":
        rates = [8000, 44100, 16000]
        return [
            {
                "array": rng.standard_normal(
                    (1 + i % 2, int(rates[i % 3] * (0.3 + 0.2 * i)))
                ).astype(np.float32),
                "sampling_rate": rates[i % 3],
            }
            for i in range(n)
        ]
    if modality == "tabular":
        # The third row has a missing value, so the learned missing-value tokens are used.
        return [
            {
                "x": float(rng.normal()),
                "y": float("nan") if i == 2 else float(i),
                "color": ["red", "blue"][i % 2],
            }
            for i in range(n)
        ]
    raise ValueError(modality)


def four_modality_config(fusion: str = "concat", **fusion_kwargs: Any) -> dict[str, Any]:
    return {
        "encoders": {
            "text": {"name": "hf_text", "config": TINY_BERT},
            "image": {"name": "timm_image", "model_name": "resnet10t", "img_size": 32},
            "audio": {"name": "audio_cnn", "channels": [4, 8], **TINY_AUDIO},
            "tabular": {"name": "tabular_mlp", "numerical": ["x", "y"], "dim": 8, "hidden_dim": 16},
        },
        "fusion": {"name": fusion, "dim": 16, **fusion_kwargs},
        "head": {"task": "classification", "num_classes": 3},
    }


def acceptance_batch() -> list[dict[str, Any]]:
    """The foundation issue's raw batch of 4: one empty text, RGB/L/RGBA images,
    8 kHz mono and 44.1 kHz stereo audio, a zero-length clip, a NaN in tabular data."""
    rng = np.random.default_rng(0)
    return [
        {
            "text": "a red circle with stripes",
            "image": Image.new("RGB", (40, 30), (200, 10, 10)),
            "audio": {"array": rng.standard_normal(8000).astype(np.float32), "sampling_rate": 8000},
            "tabular": {"x": 0.5, "y": 1.5},
            "label": 0,
        },
        {
            "text": "",
            "image": Image.new("L", (32, 32), 128),
            "audio": {
                "array": rng.standard_normal((2, 44100)).astype(np.float32),
                "sampling_rate": 44100,
            },
            "tabular": {"x": float("nan"), "y": 2.0},
            "label": 1,
        },
        {
            "text": "a quiet blue square",
            "image": Image.new("RGBA", (25, 50), (0, 0, 255, 120)),
            "audio": {"array": np.zeros(0, dtype=np.float32), "sampling_rate": 8000},
            "tabular": {"x": -1.0, "y": 0.0},
            "label": 2,
        },
        {
            "text": "loud green noise",
            "image": Image.new("RGB", (16, 16), (0, 255, 0)),
            "audio": {"array": rng.standard_normal(4000).astype(np.float32), "sampling_rate": 8000},
            "tabular": {"x": 3.0, "y": -2.0},
            "label": 1,
        },
    ]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def assert_all_parameters_have_grad(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without a gradient: {missing}"
    nonfinite = [
        n
        for n, p in module.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    assert not nonfinite, f"non-finite gradients: {nonfinite}"
    zero = [
        n for n, p in module.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0
    ]
    assert not zero, f"parameters whose gradient is all zero: {zero}"
