from __future__ import annotations

import json

import pytest
import torch

import fusion
import multimodal as mm
from tests.conftest import acceptance_batch, assert_all_parameters_have_grad, four_modality_config

FUSIONS = ["concat", "cross_attention", "moe"]
SMALL = {"cross_attention": {"num_heads": 2}, "moe": {"num_experts": 4}}


@pytest.mark.parametrize("name", FUSIONS)
def test_four_modalities_raw_batch_forward_backward(name: str) -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config(name, **SMALL.get(name, {})), samples).train()
    batch = model.preprocess(samples)
    assert batch["present"]["text"].tolist() == [True, False, True, True]  # empty text is absent
    assert batch["present"]["audio"].tolist() == [True, True, False, True]  # zero-length clip
    assert batch["labels"].tolist() == [0, 1, 2, 1]
    out = model(batch)
    assert out.logits.shape == (4, 3)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert_all_parameters_have_grad(model.head)
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    for m in model.modalities:  # the loss reaches every encoder
        assert any(
            g is not None and g.abs().sum() > 0
            for n, g in grads.items()
            if n.startswith(f"encoders.{m}.")
        )
    # Absent text (sample 1) and audio (sample 2) use the learned missing vectors.
    combine = model.fusion.combine
    assert (
        combine.missing["text"].grad.abs().sum() > 0
        and combine.missing["audio"].grad.abs().sum() > 0
    )


@pytest.mark.parametrize("name", FUSIONS)
def test_save_load_round_trip_is_bit_identical(name: str, tmp_path) -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config(name, **SMALL.get(name, {})), samples)
    # A few training steps so the weights and BatchNorm statistics are not the init values.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(model.preprocess(samples)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    expected = model(model.preprocess(samples)).logits
    model.save_pretrained(tmp_path / "model")
    assert not list(tmp_path.glob(".model.tmp-*")), "no temporary folder is left behind"
    loaded = mm.MultimodalModel.from_pretrained(tmp_path / "model")
    assert not loaded.training
    assert torch.equal(loaded(loaded.preprocess(samples)).logits, expected)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["fusion"]["name"] == name and config["encoders"]["text"]["name"] == "hf_text"


def test_save_overwrites_and_a_failed_save_keeps_the_old_model(tmp_path, monkeypatch) -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config(), samples).eval()
    model.save_pretrained(tmp_path / "m")
    before = (tmp_path / "m" / "model.safetensors").read_bytes()

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("multimodal.modeling.model.save_file", fail)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(OSError):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_predict_and_missing_everything() -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config(), samples)
    out = model.predict([{"text": "red"}, {}])
    assert out["probs"].shape == (2, 3)
    assert torch.allclose(out["probs"].sum(-1), torch.ones(2))
    assert model.training, "predict restores the training flag"


def test_labels_are_checked() -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config(), samples)
    with pytest.raises(ValueError, match="sample 1: label 3 is out of range"):
        model.preprocess([{"text": "a", "label": 0}, {"text": "b", "label": 3}])
    with pytest.raises(TypeError, match="sample 0: expected an integer class label"):
        model.preprocess([{"text": "a", "label": "cat"}])


@pytest.mark.parametrize(
    "task,labels", [("multilabel", [[1, 0, 1], [0, 0, 1]]), ("regression", [[0.5], [-1.0]])]
)
def test_other_heads(task: str, labels: list) -> None:
    config = four_modality_config()
    config["head"] = {"task": task, "num_classes": len(labels[0])}
    samples = [{**s, "label": y} for s, y in zip(acceptance_batch()[:2], labels, strict=True)]
    model = mm.build_model(config, samples)
    out = model(model.preprocess(samples))
    assert out.logits.shape == (2, len(labels[0])) and torch.isfinite(out.loss)


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="unknown key 'fusoin'; close matches: \\['fusion'\\]"):
        mm.build_model(
            {"encoders": {"t": {"name": "tabular_mlp", "numerical": ["x"]}}, "fusoin": {}}
        )
    with pytest.raises(ValueError, match="encoders.t: needs a 'name'"):
        mm.build_model({"encoders": {"t": {"numerical": ["x"]}}})


def test_build_model_from_yaml(tmp_path) -> None:
    path = tmp_path / "model.yaml"
    path.write_text(
        "encoders:\n  tab: {name: tabular_mlp, numerical: [x, y], dim: 8}\n"
        "fusion: {name: cross_attention, dim: 16, num_heads: 2}\nhead: {task: classification, num_classes: 2}\n"
    )
    model = mm.build_model(path)
    assert isinstance(model.fusion, fusion.CrossAttentionFusion)
    assert model.modalities == ["tab"]


def test_initialisation_does_not_depend_on_the_order_of_config_keys() -> None:
    import multimodal as mm
    from tests.multimodal.tiny_run import tiny_run

    config = tiny_run()
    encoders = config["encoders"]
    reordered = {**config, "encoders": dict(reversed(list(encoders.items())))}
    assert list(reordered["encoders"]) != list(encoders)
    samples = [{"text": "a red circle", "tabular": {"tab_0": 1.0, "tab_1": 0.0, "tab_2": 2.0, "tab_3": 1.0,
                                                    "tab_channel": "web"}}] * 4  # fmt: skip
    a = mm.build_model({k: config[k] for k in ("encoders", "fusion", "head")}, samples, seed=3)
    b = mm.build_model({k: reordered[k] for k in ("encoders", "fusion", "head")}, samples, seed=3)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_encoder_outputs_computed_earlier_enter_through_forward() -> None:
    samples = acceptance_batch()
    model = mm.build_model(four_modality_config("concat"), samples, seed=0).eval()
    batch = model.preprocess(samples)
    with torch.no_grad():
        direct = model(batch)
        encoded = model.encode(batch)
        cached = model({"labels": batch["labels"]}, encoded)  # no processor tensors needed
    assert torch.equal(cached.logits, direct.logits) and torch.equal(cached.loss, direct.loss)
    assert not encoded.masks["text"][1].any()  # the absent text has no valid token


def test_copy_model_is_a_deepcopy_that_shares_only_what_the_memo_names() -> None:
    import copy

    from torch import nn
    from torch.nn.utils import parametrize

    from multimodal.modeling.copying import copy_model

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    model.tied = nn.ModuleList([model[0]])  # the same module twice
    model.register_buffer("scale", torch.tensor([2.0]))
    model.names = ["a", "b"]
    shared = nn.Linear(2, 2)
    model.frozen = shared
    copied = copy_model(model, {id(shared): shared})
    expected = copy.deepcopy(model, {id(shared): shared})
    assert copied.frozen is shared and copied[0] is not model[0] and copied.tied[0] is copied[0]
    assert copied.state_dict().keys() == expected.state_dict().keys()
    for (name, a), b in zip(copied.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
        if not name.startswith("frozen"):
            assert a.data_ptr() != b.data_ptr(), name
    assert copied.names == model.names and copied.names is not model.names
    assert isinstance(copied[0].weight, nn.Parameter) and copied[0].weight.requires_grad
    copied[0].register_forward_hook(lambda *a: None)  # the copy's hooks are its own
    assert not model[0]._forward_hooks
    copied[0].weight.data.add_(1.0)
    assert not torch.equal(copied[0].weight, model[0].weight)

    class Double(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

    layer = nn.Linear(2, 2)
    parametrize.register_parametrization(layer, "weight", Double())
    other = copy_model(layer)  # a class that customises its copy: copy.deepcopy's
    assert type(other).__name__ == type(layer).__name__ and torch.equal(other.weight, layer.weight)
