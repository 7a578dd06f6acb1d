"""The fusion contract, checked for every registered fusion."""

from __future__ import annotations

import pytest
import torch

import fusion
from tests.conftest import assert_all_parameters_have_grad

DIMS = {"audio": 6, "image": 10, "text": 8}
SMALL = {
    "cross_attention": {"num_heads": 2},
    "moe": {"num_experts": 4},
    "bottleneck": {"num_heads": 2},
    "transformer": {"num_heads": 2},
}


def make(name: str) -> torch.nn.Module:
    return fusion.create_fusion(name, DIMS, 16, **SMALL.get(name, {}))


def inputs(batch: int, tokens: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(batch * 10 + tokens)
    lengths = {"audio": tokens, "image": tokens + 1, "text": max(tokens - 1, 1)}
    t = {m: torch.randn(batch, lengths[m], d, generator=g) for m, d in DIMS.items()}
    k = {m: torch.ones(batch, lengths[m], dtype=torch.bool) for m in DIMS}
    if tokens > 1:
        k["text"][:, -1] = False  # some padding
    return t, k


@pytest.mark.parametrize("name", fusion.list_fusions())
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("tokens", [1, 5])
def test_shapes(name: str, batch: int, tokens: int) -> None:
    f = make(name).eval()
    out = f(*inputs(batch, tokens))
    assert out.fused.shape == (batch, f.out_dim) and f.out_dim == 16
    assert torch.isfinite(out.fused).all()
    assert out.aux_loss is None or (out.aux_loss.ndim == 0 and torch.isfinite(out.aux_loss))
    assert isinstance(out.info, dict)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_fully_masked_rows_are_finite_and_get_gradients(name: str) -> None:
    f = make(name).train()
    t, k = inputs(3, 5)
    k["audio"][0] = False  # sample 0 has no audio
    k["image"][1] = False  # sample 1 has no image
    k["text"][2] = False
    k["audio"][2] = False  # sample 2 has only the image
    out = f(t, k)
    assert torch.isfinite(out.fused).all()
    loss = out.fused.square().mean() + (out.aux_loss if out.aux_loss is not None else 0)
    loss.backward()
    assert_all_parameters_have_grad(f)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_every_modality_absent_is_finite(name: str) -> None:
    f = make(name).eval()
    t, k = inputs(2, 3)
    out = f(t, {m: torch.zeros_like(v) for m, v in k.items()})
    assert torch.isfinite(out.fused).all()


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_dict_order_does_not_matter(name: str) -> None:
    f = make(name).eval()
    t, k = inputs(3, 4)
    a = f(t, k).fused
    b = f(dict(reversed(list(t.items()))), dict(reversed(list(k.items())))).fused
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_missing_required_modality_raises(name: str) -> None:
    f = make(name)
    t, k = inputs(2, 3)
    del t["image"], k["image"]
    with pytest.raises(ValueError, match=r"missing \['image'\]"):
        f(t, k)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_wrong_dim_raises(name: str) -> None:
    f = make(name)
    t, k = inputs(2, 3)
    t["text"] = torch.randn(2, 2, 7)
    with pytest.raises(ValueError, match=r"tokens\['text'\]: expected \[B, T, 8\]"):
        f(t, k)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_masked_tokens_do_not_leak(name: str) -> None:
    """Changing a token under a False mask never changes the output."""
    f = make(name).eval()
    t, k = inputs(2, 5)
    a = f(t, k).fused
    t["text"][:, -1] = 1e3  # masked position
    assert torch.allclose(a, f(t, k).fused, atol=1e-5)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_each_rows_eval_output_is_the_same_at_batch_sizes_1_7_and_64(name: str) -> None:
    """A row's answer never depends on the other rows of its batch (moe: dropless routing)."""
    f = make(name).eval()
    t, k = inputs(64, 5)
    k["audio"][::3] = False  # absent modalities in some rows
    k["image"][1::4, 2:] = False  # and ragged token counts
    with torch.no_grad():
        whole = f(t, k).fused
        for size in (1, 7):
            parts = [
                f({m: x[i : i + size] for m, x in t.items()}, {m: x[i : i + size] for m, x in k.items()}).fused
                for i in range(0, 64, size)
            ]  # fmt: skip
            torch.testing.assert_close(torch.cat(parts), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_vmap_over_stacked_copies_draws_what_each_draws_alone(name: str) -> None:
    """Under keyed randomness and ``static_shapes``, three copies stacked under vmap (each
    with its own seed) give each copy's own training-mode output and auxiliary loss,
    dropout masks and router noise included: what ``engine.episodes`` relies on."""
    from torch.func import functional_call, stack_module_state, vmap

    from multimodal.core.randomness import keyed_randomness

    torch.manual_seed(0)
    copies = [make(name).train() for _ in range(3)]
    params, buffers = stack_module_state(copies)
    base = make(name).train()
    t, k = inputs(6, 5)
    k["audio"][0] = False

    def run(p, b, seed):
        with keyed_randomness(seed, 7), fusion.static_shapes():
            out = functional_call(base, (p, b), (t, k))
        aux = out.aux_loss if out.aux_loss is not None else out.fused.sum() * 0
        return out.fused, aux

    fused, aux = vmap(run)(params, buffers, torch.tensor([11, 12, 13]))
    for i, copy in enumerate(copies):
        with keyed_randomness(11 + i, 7):
            alone = copy(t, k)
        torch.testing.assert_close(fused[i], alone.fused, atol=1e-5, rtol=1e-5)
        if alone.aux_loss is not None:
            torch.testing.assert_close(aux[i], alone.aux_loss, atol=1e-5, rtol=1e-5)
    with keyed_randomness(11, 7):
        again = copies[0](t, k).fused
    with keyed_randomness(11, 8):
        other_step = copies[0](t, k).fused
    torch.testing.assert_close(again, fused[0], atol=1e-5, rtol=1e-5)
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in copies[0].modules()):
        assert not torch.allclose(other_step, again)  # another step, other masks


@pytest.mark.parametrize("name", fusion.list_fusions())
def test_a_fusion_that_pools_first_gives_the_same_output_on_pooled_tokens(name: str) -> None:
    """``pools_first`` lets the episode trainer pool cached tokens once; for such a fusion
    one pooled token per row (absent rows too) must give its output on the tokens."""
    f = make(name).eval()
    t, k = inputs(4, 5)
    k["audio"][0] = False
    k["image"][1] = False
    pooled = {m: fusion.pool_tokens(t[m], k[m]) for m in t}
    on_pooled = f({m: p[0] for m, p in pooled.items()}, {m: p[1] for m, p in pooled.items()})
    same = torch.allclose(on_pooled.fused, f(t, k).fused, atol=1e-6)
    # A fusion that reads tokens one by one (attention) must not claim it.
    assert same == f.pools_first
    if f.pools_first:  # pooled_inputs: the pooled token taken as it is, the same output
        with fusion.pooled_inputs():
            as_is = f({m: p[0] for m, p in pooled.items()}, {m: p[1] for m, p in pooled.items()})
        torch.testing.assert_close(as_is.fused, on_pooled.fused, atol=1e-6, rtol=0)


def test_pool_input_takes_the_pooled_token_only_under_pooled_inputs() -> None:
    tokens, mask = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]), torch.tensor([[True], [False]])
    torch.testing.assert_close(fusion.pool_input(tokens, mask), torch.tensor([[1.0, 2.0], [0, 0]]))
    with fusion.pooled_inputs():  # the caller's promise; a row of several tokens is averaged
        torch.testing.assert_close(fusion.pool_input(tokens, mask), tokens[:, 0])
        several = torch.arange(12.0).view(2, 3, 2)
        mean = fusion.pool_input(several, torch.ones(2, 3, dtype=torch.bool))
        torch.testing.assert_close(mean, several.mean(1))
    torch.testing.assert_close(fusion.pool_input(tokens, mask), torch.tensor([[1.0, 2.0], [0, 0]]))


def test_attention_softmax_on_short_rows_is_torchs_softmax() -> None:
    from fusion._attention import _softmax

    scores = torch.randn(3, 2, 4, 9, 10) * 5
    scores[..., 3:6] = float("-inf")  # masked keys; every row keeps a finite one
    torch.testing.assert_close(_softmax(scores), scores.softmax(-1), atol=1e-6, rtol=1e-5)
    assert torch.equal(_softmax(scores)[..., 3:6], torch.zeros(3, 2, 4, 9, 3))
