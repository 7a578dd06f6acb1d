from __future__ import annotations

import datasets
import pytest

import multimodal as mm
from multimodal import engine
from multimodal.analysis.explain import explain, write_explanation
from multimodal.experiments.config import model_config, train_config
from tests.multimodal.tiny_run import tiny_run

IMAGE = {
    "name": "timm_image",
    "model_name": "resnet10t",
    "img_size": 16,
    "model_kwargs": {"zero_init_last": False},
}
TABULAR = ["tab_0", "tab_1", "tab_2", "tab_3", "tab_channel"]


def _config(fusion: dict) -> dict:
    config = tiny_run(encoders={**tiny_run()["encoders"], "image": IMAGE}, fusion=fusion)
    config["data"]["options"]["samples_per_domain"] = 192
    return config


def _only_one_modality_informative(dsd: datasets.DatasetDict, carrier: str) -> dict:
    """Shuffle every other modality's columns across rows: they keep their values, lose the label."""
    others = [c for c in ("text", "image") if c != carrier] + (
        TABULAR if carrier != "tabular" else []
    )
    return {
        split: datasets.concatenate_datasets(
            [ds.remove_columns(others), ds.select_columns(others).shuffle(seed=i + 1).flatten_indices()], axis=1
        )
        for i, (split, ds) in enumerate(dsd.items())
    }  # fmt: skip


def _trained(config: dict, carrier: str, epochs: int) -> tuple:
    spec = mm.DatasetSpec.from_dict(config["data"])
    datasets.disable_progress_bars()
    dsd = _only_one_modality_informative(mm.load_dataset(spec), carrier)
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    engine.fit(
        model,
        engine.FitData(spec, dsd["train"], dsd["validation"]),
        train_config(config, epochs=epochs),
    )
    return model, spec, dsd


@pytest.mark.slow
@pytest.mark.parametrize("carrier", ["tabular", "image"])
def test_explain_ranks_the_only_informative_modality_first(carrier, tmp_path) -> None:
    model, spec, dsd = _trained(_config({"name": "concat", "dim": 16}), carrier, epochs=4)
    accuracy = engine.evaluate(model, dsd["test"], spec)["accuracy"]
    assert accuracy > 0.4  # chance is 0.25: the model did learn from the carrier
    result = explain(model, dsd["test"], spec, ig_steps=16)
    assert result["ablation"]["ranking"][0] == carrier
    # The carrier alone keeps the model's skill; the shuffled modalities alone keep none.
    imbalance = result["imbalance"]
    assert imbalance["dominant"] == carrier and imbalance["imbalance_degree"] > 0.3
    assert imbalance["contribution"][carrier] == max(imbalance["contribution"].values())
    assert result["integrated_gradients"]["ranking"][0] == carrier
    assert result["samples"] == len(dsd["test"]) == len(result["per_sample"])
    paths = write_explanation(result, tmp_path)
    assert paths["contributions"].stat().st_size > 5_000 and paths["json"].is_file()


def test_moe_load_per_domain_and_cross_attention_maps(tmp_path) -> None:
    spec = mm.DatasetSpec.from_dict(_config({})["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd["train"], spec, "train")
    rows = [view[i] for i in range(len(view))]
    moe = mm.build_model(
        model_config(_config({"name": "moe", "dim": 16, "num_experts": 4, "route": "modality"})),
        rows,
    )
    result = explain(moe, dsd["test"], spec, ig_steps=4)
    load = result["expert_load"]
    assert set(load["per_domain"]) == set(dsd["test"]["domain"])
    assert set(load["per_modality"]) == {"image", "tabular", "text"}
    for shares in [*load["per_domain"].values(), *load["per_modality"].values()]:
        assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert "expert_load" in write_explanation(result, tmp_path / "moe")

    cross = mm.build_model(
        model_config(_config({"name": "cross_attention", "dim": 16, "depth": 2, "num_heads": 2})),
        rows,
    )
    result = explain(cross, dsd["test"], spec, ig_steps=4, attention_sample=3)
    attention = result["attention"]
    assert attention["row"] == 3 and len(attention["layers"]) == 2
    text_tokens = int(
        sum(cross.encoders["text"].process([dsd["test"][3]["text"]])["attention_mask"][0])
    )
    for layer in attention["layers"]:
        assert len(layer["text"]) == text_tokens  # one row per real text token
        for m, weights in layer.items():
            width = sum(w for _, w in attention["keys"][m])
            assert all(
                len(row) == width and sum(row) == pytest.approx(1.0, abs=1e-5) for row in weights
            )
    assert dict(attention["keys"]["image"])["text"] == text_tokens  # padding is not a key
    assert write_explanation(result, tmp_path / "cross")["attention"].stat().st_size > 5_000
    assert "expert_load" not in result and "attention" not in explain(
        moe, dsd["test"].select(range(4)), spec, ig_steps=2
    )
