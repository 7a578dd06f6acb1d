from __future__ import annotations

import math

import pytest
import torch

from multimodal.modeling.uda import (
    create_uda_objective,
    dann_schedule,
    grad_reverse,
    list_uda_objectives,
)


def test_registry_has_every_method() -> None:
    assert list_uda_objectives() == [
        "cdan",
        "coral",
        "dann",
        "entropy",
        "fixmatch",
        "mmd",
        "pseudo_label",
    ]


def test_gradient_reversal_and_schedule() -> None:
    x = torch.ones(3, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -1.0))
    assert (
        dann_schedule(0.0) == 0.0
        and dann_schedule(1.0) > 0.99
        and 0 < dann_schedule(0.2) < dann_schedule(0.5)
    )


def test_coral_and_mmd_are_zero_on_the_same_sample_and_grow_with_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    for name in ("coral", "mmd"):
        loss = create_uda_objective(name, 8, 3)
        same = loss(x, x, None, None, 0.5).item()
        shifted = loss(x, x * 3 + 2, None, None, 0.5).item()
        assert abs(same) < 1e-5 and shifted > 0.01, name


def test_entropy_is_log_c_when_uniform_and_small_when_confident() -> None:
    loss = create_uda_objective("entropy", 8, 4)
    assert loss(None, None, None, torch.zeros(5, 4), 0.0).item() == pytest.approx(math.log(4))
    assert loss(None, None, None, torch.tensor([[20.0, 0, 0, 0]]), 0.0).item() < 1e-6


@pytest.mark.parametrize("name", ["dann", "cdan"])
def test_adversarial_methods_reverse_the_feature_gradient(name: str) -> None:
    torch.manual_seed(0)
    loss = create_uda_objective(name, 8, 3).eval()
    fs, ft = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    logits = torch.randn(6, 3)
    loss(fs, ft, logits, logits, progress=1.0).backward()
    reversed_grad = fs.grad.clone()
    # The same loss without reversal: gradient of the classifier loss w.r.t. the features.
    fs.grad = None
    import multimodal.modeling.uda._base as base

    original = base.dann_schedule
    try:
        for module in (
            __import__("multimodal.modeling.uda.dann", fromlist=["_"]),
            __import__("multimodal.modeling.uda.cdan", fromlist=["_"]),
        ):
            module.dann_schedule = lambda p: -1.0  # reversal by -1 = no reversal
        loss(fs, ft, logits, logits, progress=1.0).backward()
    finally:
        for module in (
            __import__("multimodal.modeling.uda.dann", fromlist=["_"]),
            __import__("multimodal.modeling.uda.cdan", fromlist=["_"]),
        ):
            module.dann_schedule = original
    coeff = dann_schedule(1.0)
    assert torch.allclose(reversed_grad, -coeff * fs.grad, atol=1e-6)


@pytest.mark.parametrize("method", ["dann", "coral"])
def test_fit_with_unsupervised_adaptation(method: str, tmp_path) -> None:
    import json

    import multimodal as mm
    from multimodal import engine
    from multimodal.experiments.config import model_config, train_config
    from tests.multimodal.tiny_run import tiny_run

    config = tiny_run()
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    source = mm.select_domains(dsd["train"], "d0")
    target = mm.select_domains(dsd["train"], "d1")
    view = mm.data.RowView(source, spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    cfg = train_config(
        config,
        epochs=2,
        uda=method,
        uda_weight=0.5,
        output_dir=str(tmp_path),
        log_every=1,
    )
    result = engine.fit(
        model,
        engine.FitData(spec, source, mm.select_domains(dsd["validation"], "d0"), unlabelled=target),
        cfg,
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    adapt_losses = [r["uda_loss"] for r in records if "uda_loss" in r]
    assert len(adapt_losses) == result.steps and all(math.isfinite(x) for x in adapt_losses)


def test_adaptation_without_target_rows_is_an_error() -> None:
    import multimodal as mm
    from multimodal import engine
    from multimodal.experiments.config import model_config, train_config
    from tests.multimodal.tiny_run import tiny_run

    config = tiny_run()
    spec = mm.DatasetSpec.from_dict(config["data"])
    dsd = mm.load_dataset(spec)
    view = mm.data.RowView(dsd["train"], spec, "train")
    model = mm.build_model(model_config(config), [view[i] for i in range(len(view))], seed=0)
    with pytest.raises(ValueError, match="needs FitData.unlabelled"):
        engine.fit(model, engine.FitData(spec, dsd["train"]), train_config(config, uda="mmd"))


def test_transfer_has_an_unsupervised_stage_beside_k_shot() -> None:
    from multimodal.experiments.transfer import transfer_adaptations
    from tests.multimodal.tiny_run import tiny_run

    config = tiny_run(
        transfer={
            "k_shot": 3,
            "adapt": {"epochs": 1},
            "scratch": {"epochs": 1},
            "uda": {"epochs": 1},
            "robustness": True,
        }
    )
    config["train"]["epochs"] = 1
    reports = transfer_adaptations(config, ["head", "coral"])
    robustness = reports["coral"].robustness
    assert set(robustness) == {"source", "d1"}  # the source model, and the adapted one on d1
    assert [r["dropped"] for r in robustness["source"]] == [[], ["tabular"], ["text"]]
    assert robustness["source"] == reports["head"].robustness["source"]  # one source model
    assert robustness["d1"] != reports["head"].robustness["d1"]
    assert set(reports) == {"head", "coral"}
    head, coral = reports["head"].targets["d1"], reports["coral"].targets["d1"]
    assert head.zero_shot == coral.zero_shot and head.scratch == coral.scratch  # shared stages
    assert (
        head.adapt_samples == 12 and coral.adapt_samples > 12
    )  # k-shot vs the unlabelled target split
    assert reports["coral"].config["transfer"]["adaptation"] == "coral"


def test_transfer_shows_one_bar_whose_total_is_every_stage_step(capsys) -> None:
    from multimodal.experiments.transfer import transfer_adaptations
    from tests.multimodal.tiny_run import tiny_run

    transfer_adaptations(tiny_run(train={"progress": True}), ["head", "full"])
    updates = capsys.readouterr().err.replace("\r", "\n").splitlines()
    bars = [line for line in updates if "step" in line]
    assert bars and all(line.startswith("transfer:") for line in bars)  # no per-fit "train" bars
    # source: 3 epochs x 5 batches (34 rows of 8); scratch and the 2 adaptations on the
    # 12-row sample (3 per class): 3 epochs x 2 batches each
    assert "| 33/33 [" in bars[-1] and "adapt full" in bars[-1]
