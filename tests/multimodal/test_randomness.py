"""Keyed randomness: dropout masks and noise as a pure function of (seed, step, draw)."""

from __future__ import annotations

import torch

from multimodal.core.randomness import Dropout, dropout, keyed, keyed_randomness, normal_like


def test_a_key_gives_the_same_draws_and_another_key_others() -> None:
    x = torch.ones(200, 50)
    with keyed_randomness(3, 10):
        first, second = dropout(x, 0.3), dropout(x, 0.3)
    with keyed_randomness(3, 10):
        again = dropout(x, 0.3)
    with keyed_randomness(4, 10):
        other_seed = dropout(x, 0.3)
    with keyed_randomness(3, 11):
        other_step = dropout(x, 0.3)
    assert torch.equal(first, again)  # the same key, the same first draw
    for other in (second, other_seed, other_step):
        assert not torch.equal(first, other)
    dropped = (first == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.01  # 10,000 draws: the rate within 4 standard errors
    assert torch.allclose(first[first != 0], torch.tensor(1 / 0.7))


def test_draws_do_not_depend_on_the_global_generator_and_outside_the_context_they_do() -> None:
    x = torch.ones(64, 8)
    torch.manual_seed(0)
    with keyed_randomness(5, 0):
        a = dropout(x, 0.5)
    torch.manual_seed(123)
    with keyed_randomness(5, 0):
        b = dropout(x, 0.5)
    assert torch.equal(a, b) and not keyed()
    torch.manual_seed(0)
    c = Dropout(0.5).train()(x)
    torch.manual_seed(0)
    assert torch.equal(c, torch.nn.functional.dropout(x, 0.5))


def test_normal_noise_is_standard_and_a_tensor_seed_draws_as_the_int() -> None:
    x = torch.zeros(20_000)
    with keyed_randomness(9, 2):
        z = normal_like(x)
    assert abs(z.mean().item()) < 0.03 and abs(z.std().item() - 1) < 0.03
    with keyed_randomness(torch.tensor(9), 2):
        assert torch.equal(normal_like(x), z)
    seeds = torch.tensor([9, 10])

    def draw(seed: torch.Tensor) -> torch.Tensor:
        with keyed_randomness(seed, 2):
            return normal_like(x)

    both = torch.func.vmap(draw, randomness="error")(seeds)  # no global generator is touched
    assert torch.equal(both[0], z) and not torch.equal(both[1], z)


def test_draws_made_ahead_outside_vmap_are_each_seeds_own_draws_bit_for_bit() -> None:
    """What a batched fit does: the first step notes each draw's kind and size, later steps
    make every episode's draws ahead (``draws_ahead``); the masks and noise are those of
    ``keyed_randomness`` with each int seed, past the keys hashed ahead too."""
    from torch.func import vmap

    from multimodal.core.randomness import draw_keys, draws_ahead, keyed_by

    seeds, x = torch.tensor([3, 4, 5]), torch.randn(3, 6, 5)

    def draws(keys, xx, made=(), kinds=(), record=None):
        with keyed_by(keys, made, kinds, record):
            return torch.stack([dropout(xx, 0.2), normal_like(xx), dropout(xx, 0.5)])

    for ahead in (16, 1):  # one key ahead: the later draws' keys come from the block's key
        kinds: list[tuple[str, int]] = []
        keys = draw_keys(seeds, 11, count=ahead)
        noted = vmap(lambda k, xx, kinds=kinds: draws(k, xx, record=kinds))(keys, x)
        assert kinds == [("coarse", 30), ("fine", 30), ("fine", 30), ("coarse", 30)]
        made = draws_ahead(keys, kinds)
        given = vmap(lambda k, xx, m, kinds=kinds: draws(k, xx, m, kinds))(keys, x, made)
        for e, seed in enumerate(seeds.tolist()):
            with keyed_randomness(seed, 11):
                alone = torch.stack([dropout(x[e], 0.2), normal_like(x[e]), dropout(x[e], 0.5)])
            assert torch.equal(noted[e], alone) and torch.equal(given[e], alone)
    # a draw of another size than noted is made in place, not taken from the ones ahead
    with keyed_by(keys[0], [torch.zeros(30)], [("coarse", 30)]):
        with_other_size = dropout(torch.ones(4), 0.5)
    with keyed_randomness(3, 11):
        assert torch.equal(with_other_size, dropout(torch.ones(4), 0.5))


def test_int32_hashing_gives_the_int64_hashes_bits_and_steps_made_together_are_each_steps() -> None:
    """Draws hash in int32, which wraps modulo 2^32: the bits of the int64 hash with masks,
    for tensor and int streams across the whole 32-bit range; and the draws of a run of
    steps made at once (``StepDraws``) are each step's ``draws_ahead``, bit for bit."""
    from multimodal.core import randomness as r

    index = torch.arange(5000, dtype=torch.int32)
    streams = torch.tensor([[0], [1], [2**31 - 1], [2**31], [2**32 - 1], [0x9E3779B1]])
    expected = r._hash32((index.long() * 0x9E3779B1 + streams) & r._M32)
    assert torch.equal(r._bits(index, streams).long() & r._M32, expected)
    for row, stream in enumerate(streams[:, 0].tolist()):
        assert torch.equal(r._bits(index, stream).long() & r._M32, expected[row])
    seeds = torch.tensor([7, 8, 9])
    kinds = [("coarse", 41), ("fine", 6), ("coarse", 8), ("fine", 3)]
    draws = r.StepDraws(seeds, total=9)
    assert draws(0)[1] == []  # before the kinds are noted: keys only
    draws.kinds = kinds
    for step in range(1, 9):
        keys, made = draws(step)
        assert torch.equal(keys, r.draw_keys(seeds, step))
        alone = r.draws_ahead(r.draw_keys(seeds, step), kinds)
        assert all(torch.equal(a, b) for a, b in zip(made, alone, strict=True))


def test_uniforms_read_each_hash_as_its_halves_low_first_on_either_byte_order() -> None:
    """Dropout's uniforms (``COARSE``) are each hash's low then high 16 bits over 2^16: the
    little-endian path (the hashes' memory read as uint16) and the other machines' path
    (masks and shifts) give the same values, and ``out`` gets them too."""
    from multimodal.core import randomness as r

    bits = r._bits(torch.arange(4099, dtype=torch.int32), torch.tensor([[5], [2**31 + 3]]))
    read = r._halves(bits, little=True).to(torch.int64)
    shifted = r._halves(bits, little=False).to(torch.int64)
    assert torch.equal(read, shifted) and read.shape == (2, 2 * 4099)
    assert torch.equal(read[:, 1::2] * 65536 + read[:, ::2], bits.long() & r._M32)
    uniforms = r._to_uniforms(r.COARSE, bits)
    assert torch.equal(uniforms, shifted.float() / 65536) and uniforms.dtype == torch.float32
    out = torch.empty_like(uniforms)
    assert r._to_uniforms(r.COARSE, bits, out) is out and torch.equal(out, uniforms)
