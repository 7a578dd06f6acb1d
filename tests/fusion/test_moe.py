from __future__ import annotations

import pytest
import torch

import fusion
from fusion.moe import SparseMoE


def test_capacity_and_dispatch_are_sparse() -> None:
    moe = SparseMoE(
        dim=8, hidden_dim=16, num_experts=4, top_k=2, capacity_factor=1.0, noisy_gating=False
    ).train()
    torch.nn.init.normal_(moe.router.weight)
    out = moe(torch.randn(32, 8))
    capacity = 2 * 32 // 4
    assert out.dispatch.sum(0).max() <= capacity
    assert out.dispatch.sum(1).max() <= 2
    assert out.dispatch.sum() == (1 - out.dropped) * 64


def test_top1_choices_take_priority_over_second_choices() -> None:
    moe = SparseMoE(
        dim=4, hidden_dim=8, num_experts=2, top_k=2, capacity_factor=0.5, noisy_gating=False
    ).train()
    with torch.no_grad():
        moe.router.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[5.0, 0, 0, 0]] * 4)  # all prefer expert 0; capacity = ceil(0.5*2*4/2) = 2
    out = moe(x)
    assert out.dispatch[:, 0].sum() == 2 and out.dispatch[:, 1].sum() == 2
    assert out.dispatch[:2, 0].all()  # the first two tokens' first choices were kept


def test_balance_loss_is_one_when_uniform_and_grows_when_collapsed() -> None:
    moe = SparseMoE(dim=4, hidden_dim=8, num_experts=4, top_k=1, noisy_gating=False)
    assert moe(torch.randn(64, 4)).balance_loss.item() == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 50.0
    collapsed = moe(torch.ones(64, 4)).balance_loss.item()
    assert collapsed > 3.5


def test_info_reports_load_per_modality() -> None:
    f = fusion.create_fusion("moe", {"a": 4, "b": 4}, 8, num_experts=4)
    t = {"a": torch.randn(6, 2, 4), "b": torch.randn(6, 1, 4)}
    k = {"a": torch.ones(6, 2, dtype=torch.bool), "b": torch.tensor([[True]] * 3 + [[False]] * 3)}
    info = f(t, k).info
    assert info["expert_load"].shape == (4,) and info["expert_load"].sum().item() == pytest.approx(
        1.0
    )
    for m in ("a", "b"):
        assert info["expert_load_per_modality"][m].sum().item() == pytest.approx(1.0)


def test_coefficients_scale_aux_loss() -> None:
    t, k = {"a": torch.randn(4, 1, 4)}, {"a": torch.ones(4, 1, dtype=torch.bool)}
    zero = fusion.create_fusion("moe", {"a": 4}, 8, balance_coef=0.0, z_loss_coef=0.0).eval()
    assert zero(t, k).aux_loss.item() == 0.0


def test_bad_top_k() -> None:
    with pytest.raises(ValueError, match="top_k"):
        fusion.create_fusion("moe", {"a": 4}, 8, num_experts=2, top_k=3)


def test_expert_choice_balances_load_exactly() -> None:
    moe = SparseMoE(
        dim=8,
        hidden_dim=16,
        num_experts=4,
        top_k=2,
        capacity_factor=1.0,
        noisy_gating=False,
        routing="expert_choice",
    )
    torch.nn.init.normal_(moe.router.weight)
    out = moe.train()(torch.randn(16, 8))
    assert out.dispatch.sum(0).tolist() == [8.0] * 4  # capacity = 1.0 * 2 * 16 / 4 per expert


def test_masked_tokens_are_never_dispatched() -> None:
    for routing in ("token_choice", "expert_choice"):
        moe = SparseMoE(dim=8, hidden_dim=16, num_experts=4, noisy_gating=False, routing=routing)
        mask = torch.tensor([True, False, True, False])
        out = moe(torch.randn(4, 8), token_mask=mask)
        assert out.dispatch[~mask].sum() == 0 and torch.equal(out.out[~mask], torch.zeros(2, 8))


@pytest.mark.parametrize("routing", ["token_choice", "expert_choice"])
def test_modality_routing_reports_each_modality_s_own_tokens(routing: str) -> None:
    f = fusion.create_fusion(
        "moe", {"a": 4, "b": 4}, 8, num_experts=4, route="modality", routing=routing
    )
    t = {"a": torch.randn(6, 2, 4), "b": torch.randn(6, 1, 4)}
    k = {"a": torch.ones(6, 2, dtype=torch.bool), "b": torch.tensor([[True]] * 3 + [[False]] * 3)}
    out = f(t, k)
    assert out.fused.shape == (6, 8) and torch.isfinite(out.fused).all()
    for m in ("a", "b"):
        assert out.info["expert_load_per_modality"][m].sum().item() == pytest.approx(1.0)
    (out.fused.sum() + out.aux_loss).backward()
    assert f.modality_embedding["a"].grad is not None
