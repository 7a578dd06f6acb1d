"""train.dp: Opacus clips every row's gradient, its accountant's epsilon is what a run
reports, mixing terms are refused, and the model comes out of a private fit unwrapped."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

# find_spec, not importorskip: the import would cost seconds at collection.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("opacus") is None,
    reason="train.dp needs the privacy extra (pip install -e '.[privacy]')",
)

import multimodal as mm  # noqa: E402
from multimodal.engine import FitData, fit  # noqa: E402
from multimodal.experiments.config import model_config  # noqa: E402
from tests.multimodal.tiny_run import tiny_data  # noqa: E402


def _private_fit(
    dp: dict, fusion: str = "concat", **train: object
) -> tuple[object, mm.MultimodalModel]:
    config, spec, dsd, rows = tiny_data(fusion={"name": fusion, "dim": 16})
    model = mm.build_model(model_config(config), rows, seed=0)
    cfg = {**config["train"], "strategy": "head", "epochs": 2, "dp": dp, **train}
    return fit(model, FitData(spec, dsd["train"], dsd["validation"]), cfg), model


def test_every_per_sample_gradient_is_clipped_to_max_grad_norm(monkeypatch) -> None:
    from opacus.optimizers.optimizer import DPOptimizer

    seen: list[tuple[list[torch.Tensor], list[torch.Tensor], float]] = []
    original = DPOptimizer.clip_and_accumulate

    def recorded(self: DPOptimizer) -> None:
        samples = [g.detach().clone() for g in self.grad_samples]
        original(self)
        seen.append(
            (samples, [p.summed_grad.detach().clone() for p in self.params], self.max_grad_norm)
        )

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", recorded)
    bound = 0.05
    result, model = _private_fit({"epsilon": 8.0, "max_grad_norm": bound})
    assert len(seen) == result.steps > 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    clipped_any = False
    for samples, summed, norm in seen:
        assert norm == bound
        # every trainable parameter has its per-sample gradients (none escapes clipping)
        assert len(samples) == len(trainable) - len(result.privacy["dp_frozen"])
        if len(samples[0]) == 0:
            continue
        per_row = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in samples], 1).norm(dim=1)
        factor = (bound / (per_row + 1e-6)).clamp(max=1.0)
        assert torch.all(per_row * factor <= bound + 1e-6)
        clipped_any |= bool((per_row > bound).any())
        for g, total in zip(samples, summed, strict=True):
            torch.testing.assert_close(
                torch.einsum("i,i...", factor, g), total, rtol=1e-5, atol=1e-7
            )
    assert clipped_any  # the bound bit: some rows' gradients were larger


def test_reported_epsilon_is_opacus_accountant_for_the_steps_rate_and_noise() -> None:
    from opacus.accountants import create_accountant
    from opacus.accountants.utils import get_noise_multiplier

    result, _ = _private_fit({"epsilon": 3.0, "delta": 1e-4, "accountant": "rdp"})
    privacy = result.privacy
    rows = 48 * 2 * 0.7  # tiny_data: 2 domains of 48 rows, the train split's share
    batches = math.ceil(int(rows) / 8)
    assert privacy["dp_sample_rate"] == pytest.approx(1 / batches, rel=0.1)
    noise = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-4, sample_rate=privacy["dp_sample_rate"],
                                 steps=result.steps, accountant="rdp")  # fmt: skip
    assert privacy["dp_noise_multiplier"] == noise
    accountant = create_accountant("rdp")
    accountant.history = [(noise, privacy["dp_sample_rate"], result.steps)]
    assert privacy["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-4), rel=1e-9)
    assert 2.5 < privacy["dp_epsilon"] <= 3.0 + 0.01


def test_private_fit_leaves_a_model_that_trains_as_usual() -> None:
    result, model = _private_fit({"epsilon": 8.0})
    assert result.privacy["dp_frozen"] == [
        "fusion.combine.missing.tabular",
        "fusion.combine.missing.text",
    ]
    assert all(model.fusion.combine.missing[m].requires_grad for m in ("tabular", "text"))
    assert not any(
        hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters()
    )
    assert not model.fusion._forward_hooks
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"balance": "ogm_ge"}, "train.balance"),
        ({"regularize": "l2sp"}, "train.regularize"),
        ({"grad_accum": 2}, "grad_accum=1"),
        ({"save_every": 2}, "checkpoint mid-run"),
    ],
)
def test_terms_that_mix_rows_or_steps_are_refused(train: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _private_fit({"epsilon": 8.0}, **train)


def test_an_infinite_budget_or_an_empty_section_trains_without_privacy() -> None:
    for dp in ({"epsilon": math.inf}, {}):
        result, _ = _private_fit(dp, regularize="l2sp", epochs=1)  # l2sp: refused only under dp
        assert result.privacy is None


def test_a_fusion_loss_over_the_batch_is_refused_and_bad_budgets_named() -> None:
    with pytest.raises(ValueError, match="auxiliary loss over the batch"):
        _private_fit({"epsilon": 8.0}, fusion="moe")
    with pytest.raises(ValueError, match="train.dp.epsilon must be > 0"):
        _private_fit({"epsilon": 0})
    with pytest.raises(ValueError, match="train.dp needs epsilon"):
        _private_fit({"delta": 1e-5})


@pytest.mark.slow
def test_two_process_ddp_private_training_keeps_the_ranks_equal(tmp_path) -> None:
    """torchrun, gloo: Opacus's DPDDP and distributed optimizer (clipped sums all-reduced,
    noise once) leave both processes with the same weights, and the budget is spent."""
    from tests.multimodal.test_training import SCRIPT, _run

    two = _run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547", str(SCRIPT),
         str(tmp_path), "--per-process-batch", "4", "--max-steps", "6", "--dp", "8"],
        env={"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"},
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    weights = [json.loads(Path(tmp_path, f"weights-{r}.json").read_text()) for r in (0, 1)]
    assert weights[0] == weights[1]
    final = json.loads((tmp_path / "final.json").read_text())
    assert final["steps"] == 6 and 7.0 < final["privacy"]["dp_epsilon"] <= 8.01


def test_full_private_fine_tuning_trains_the_encoders_on_processed_rows() -> None:
    """strategy full reads processed rows (a batch's columns at once) and trains BERT's
    position embeddings, whose ids every row shares: both once crashed the private fit."""
    config, spec, dsd, rows = tiny_data(fusion={"name": "concat", "dim": 16})
    model = mm.build_model(model_config(config), rows, seed=0)
    position = model.encoders["text"].model.embeddings.position_embeddings.weight
    before = position.detach().clone()
    cfg = {**config["train"], "strategy": "full", "epochs": 1, "dp": {"epsilon": 8.0}}
    result = fit(model, FitData(spec, dsd["train"], dsd["validation"]), cfg)
    assert result.steps > 0 and result.privacy["dp_epsilon"] <= 8.0
    assert "position_embeddings" not in " ".join(result.privacy["dp_frozen"])
    assert not torch.equal(before, position.detach())
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_embedding_ids_shared_by_the_rows_get_each_rows_own_gradient() -> None:
    """Opacus gives a row's per-sample gradient of BERT's position embeddings the gradient
    of that row's loss alone once the shared ids are expanded to the rows."""
    from opacus.grad_sample import GradSampleModule
    from transformers import BertConfig, BertModel

    from multimodal.engine.privacy import _embeddings_per_row

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    bert = BertModel(config, add_pooling_layer=False).train()  # no dropout: rows compare
    ids, target = torch.randint(0, 50, (4, 6)), torch.randn(6, 8)
    hooks = _embeddings_per_row(bert)
    wrapped = GradSampleModule(bert, loss_reduction="sum")
    (wrapped(input_ids=ids).last_hidden_state * target).sum().backward()
    weight = bert.embeddings.position_embeddings.weight
    per_row = weight.grad_sample.detach().clone()
    for hook in hooks:
        hook.remove()
    wrapped._close()
    for row in range(len(ids)):
        bert.zero_grad()
        (bert(input_ids=ids[row : row + 1]).last_hidden_state * target).sum().backward()
        assert weight.grad[:6].abs().min() > 0  # every position the row reads has a gradient
        assert torch.allclose(per_row[row], weight.grad, rtol=1e-4, atol=1e-7)
