from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from multimodal.analysis.robustness import effective_robustness, relative_robustness
from multimodal.data.corruptions import CORRUPTIONS, LEVELS, corrupt


def test_every_modality_has_its_corruptions_at_five_severities() -> None:
    assert CORRUPTIONS == {"image": ["blur", "jpeg", "noise"], "audio": ["gain", "noise", "shift"],
                           "text": ["typos", "word_dropout"], "tabular": ["missing", "noise"]}  # fmt: skip
    assert all(len(v) == 5 for v in LEVELS.values())


def test_severity_zero_is_the_clean_value_and_damage_grows_with_severity() -> None:
    rng = np.random.default_rng(0)
    text = " ".join(["word"] * 200)
    assert corrupt("text", text, "word_dropout", 0, rng) == text
    kept = [
        len(corrupt("text", text, "word_dropout", s, np.random.default_rng(1)).split())
        for s in range(1, 6)
    ]
    assert kept == sorted(kept, reverse=True) and kept[-1] < 150
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    errors = [
        np.abs(
            np.asarray(corrupt("image", image, "noise", s, np.random.default_rng(2)), dtype=float)
            - np.asarray(image)
        ).mean()
        for s in range(1, 6)
    ]
    assert errors == sorted(errors)
    wave = {"array": np.sin(np.arange(8000) / 10).astype(np.float32), "sampling_rate": 8000}
    quiet = corrupt("audio", wave, "gain", 5, rng)["array"]
    assert np.abs(quiet).max() == pytest.approx(10 ** (-30 / 20), rel=1e-3)
    row = {"a": 1.0, "b": "red"}
    missing = [
        sum(
            v is None
            for v in corrupt("tabular", row, "missing", 5, np.random.default_rng(i)).values()
        )
        for i in range(50)
    ]
    assert 30 < sum(missing) < 70  # p = 0.5 for each of 2 values over 50 rows
    with pytest.raises(ValueError, match="unknown corruption 'fog' for image"):
        corrupt("image", image, "fog", 1, rng)


def test_multibench_robustness_by_hand() -> None:
    # Severities 0..5 over [0, 1]: trapezoids of width 0.2.
    assert relative_robustness([1.0] * 6) == pytest.approx(1.0)
    assert relative_robustness([1.0, 0.8, 0.6, 0.4, 0.2, 0.0]) == pytest.approx(0.5)
    # The same drop as the reference, from a higher clean accuracy: effective robustness 0.
    assert effective_robustness([0.9, 0.8, 0.7], [0.6, 0.5, 0.4]) == pytest.approx(0.0)
    assert effective_robustness([0.9, 0.9, 0.9], [0.6, 0.5, 0.4]) == pytest.approx(0.3)
