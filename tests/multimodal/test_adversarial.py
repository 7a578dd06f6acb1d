from __future__ import annotations

import json

import pytest
import torch

import multimodal as mm
from multimodal import engine
from multimodal.analysis.adversarial import adversarial_table
from multimodal.experiments.config import model_config, train_config
from multimodal.modeling.attacks import perturb
from multimodal.modeling.model import move_to
from tests.multimodal.tiny_run import tiny_run

IMAGE = {
    "name": "timm_image",
    "model_name": "resnet10t",
    "img_size": 16,
    "model_kwargs": {"zero_init_last": False},
}
AUDIO = {"name": "audio_cnn", "channels": [4, 8], "sample_rate": 8000, "max_seconds": 0.25, "n_mels": 16,
         "n_fft": 256, "hop_length": 128}  # fmt: skip


def four_modality_run(**train: object) -> dict:
    config = tiny_run(encoders={**tiny_run()["encoders"], "image": IMAGE, "audio": AUDIO})
    config["train"].update(train)
    return config


@pytest.fixture(scope="module")
def trained():
    config = four_modality_run(epochs=4)
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    engine.fit(model, engine.FitData(spec, dsd["train"], dsd["validation"]), train_config(config))
    return model, spec, dsd


def test_pgd_is_at_most_fgsm_is_at_most_clean_at_the_same_budget(trained) -> None:
    model, spec, dsd = trained
    rows = adversarial_table(model, dsd["test"], spec, steps=5, per_modality=False)
    acc = {r["attack"]: r["accuracy"] for r in rows}
    loss = {r["attack"]: r["loss"] for r in rows}
    assert acc["pgd"] <= acc["fgsm"] <= acc["clean"]
    # The budget is large enough to hurt: the loss the attacks maximise rises (on 14 test
    # rows whether a prediction flips is a coin toss between package versions).
    assert loss["pgd"] >= loss["fgsm"] > loss["clean"] and loss["pgd"] > 1.02 * loss["clean"]


def test_perturbations_stay_in_budget_valid_range_and_real_positions(trained) -> None:
    model, spec, dsd = trained
    samples = [mm.data.RowView(dsd["test"], spec, "test")[i] for i in range(6)]
    samples[0] = {**samples[0], "audio": None}  # absent: never perturbed
    samples[1]["tabular"] = {**samples[1]["tabular"], "tab_0": float("nan")}
    batch = move_to(model.preprocess(samples), model.device)
    budgets = {"image": 0.05, "audio": 0.02, "tabular": 0.3, "text": 0.4}
    model.eval()
    for method in ("fgsm", "pgd"):
        adv = perturb(model, batch, method, budgets, steps=3)
        pixels = adv["image"]["pixel_values"] - batch["image"]["pixel_values"]
        std = torch.tensor(model.encoders["image"].data_config["std"])[:, None, None]
        assert (pixels.abs() <= 0.05 / std + 1e-5).all() and pixels.abs().max() > 0
        mean = torch.tensor(model.encoders["image"].data_config["mean"])[:, None, None]
        raw = adv["image"]["pixel_values"] * std + mean
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # still a valid image
        wave = adv["audio"]["waveform"] - batch["audio"]["waveform"]
        assert (wave.abs() <= 0.02 + 1e-6).all() and (wave[0] == 0).all()
        lengths = batch["audio"]["lengths"]
        for i, n in enumerate(lengths.tolist()):
            assert (wave[i, n:] == 0).all()  # padding untouched
        num = adv["tabular"]["numerical"]
        assert torch.isnan(num[1, 0])  # a missing value stays missing
        delta = (num - batch["tabular"]["numerical"]).nan_to_num()
        assert (delta.abs() <= 0.3 * model.encoders["tabular"].std + 1e-5).all()
        assert torch.equal(adv["tabular"]["categorical"], batch["tabular"]["categorical"])
        text = model.encoders["text"].attack_surface(batch["text"])
        embeds = adv["text"]["inputs_embeds"]
        assert ((embeds - text.value).abs() <= 0.4 * text.scale + 1e-5).all()
        pad = ~batch["text"]["attention_mask"].bool()
        assert (embeds[pad] == text.value[pad]).all()


def test_text_embeddings_path_matches_the_token_path(trained) -> None:
    model, spec, dsd = trained
    encoder = model.encoders["text"].eval()
    inputs = encoder.process(["a red circle", "quiet", ""])
    surface = encoder.attack_surface(inputs)
    by_ids = encoder(inputs).tokens
    by_embeds = encoder({**inputs, "inputs_embeds": surface.value}).tokens
    assert torch.allclose(by_ids, by_embeds, atol=1e-6)


def test_adversarial_training_option_logs_the_adversarial_loss(tmp_path) -> None:
    config = tiny_run()
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    adversarial = {"method": "pgd", "budgets": {"tabular": 0.5, "text": 1.0}, "steps": 2}
    result = engine.fit(
        model,
        engine.FitData(spec, dsd["train"], dsd["validation"]),
        train_config(
            config, epochs=1, log_every=1, output_dir=str(tmp_path), adversarial=adversarial
        ),
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "adversarial_loss" in r]
    assert len(steps) == result.steps > 0
    # The attack raises the loss of the same weights on the same batch.
    assert all(r["adversarial_loss"] >= r["train_loss"] - 1e-6 for r in steps)
    with pytest.raises(ValueError, match="unknown key 'train.adversarial.eps'"):
        engine.fit(model, engine.FitData(spec, dsd["train"], None),
                     train_config(config, max_steps=1, adversarial={"eps": 0.1}))  # fmt: skip
