"""The FLOP counter behind speed.py and gpu.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from multimodal.experiments.speed import count_flops


def test_count_flops_counts_cpu_attention_forward_and_backward() -> None:
    b, h, t, s, d = 2, 4, 10, 7, 16
    q = torch.randn(b, h, t, d, requires_grad=True)
    k, v = torch.randn(b, h, s, d), torch.randn(b, h, s, d)
    allowed = torch.rand(b, 1, t, s) > 0.3
    allowed[..., 0] = True
    forward = 2 * (2 * b * h * t * s * d)  # q @ k^T and weights @ v
    assert (
        count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)) == forward
    )
    both = count_flops(
        lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).sum().backward()
    )
    assert both == forward + 5 * (2 * b * h * t * s * d)  # the backward's five products
