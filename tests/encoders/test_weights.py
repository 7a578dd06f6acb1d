"""Local weights by config key: package paths, safe reading, key alignment, timm loading."""

from __future__ import annotations

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from encoders import create_encoder
from encoders._weights import align_state_dict, read_state_dict
from multimodal.core.resources import resolve_resource


def _renamed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors in the same order under other names, as another implementation
    of the network would save them."""
    return {
        f"_layer{i}.{k.rsplit('.', 1)[-1]}": v.clone() for i, (k, v) in enumerate(state.items())
    }


def test_package_paths_resolve_inside_installed_packages() -> None:
    path = resolve_resource("package:encoders/_base.py")
    assert path.endswith("_base.py") and open(path).read().startswith('"""')
    assert resolve_resource("/some/plain/path.pth") == "/some/plain/path.pth"
    with pytest.raises(FileNotFoundError, match=r"pip install -e '\.\[pretrained\]'"):
        resolve_resource("package:no_such_package_here/model")
    with pytest.raises(FileNotFoundError, match="no 'missing.bin' inside"):
        resolve_resource("package:encoders/missing.bin")
    with pytest.raises(ValueError, match="package:NAME/path"):
        resolve_resource("package:encoders")


def test_state_dicts_are_read_from_safetensors_and_torch_files_without_unpickling(tmp_path) -> None:
    state = {"a.weight": torch.randn(3, 2), "a.bias": torch.zeros(3)}
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": state}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        loaded = read_state_dict(tmp_path / name)
        assert set(loaded) == set(state) and torch.equal(loaded["a.weight"], state["a.weight"])

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(
        ValueError, match="refused to unpickle it: it holds more than tensors"
    ) as refused:
        read_state_dict(tmp_path / "evil.pth")
    assert "weights_only=False" not in str(refused.value)  # torch's advice, unsafe here


def test_alignment_keeps_matching_names_maps_by_position_and_refuses_other_networks() -> None:
    reference = timm.create_model("resnet10t", num_classes=10).state_dict()
    assert align_state_dict(reference, reference) == dict(reference)
    aligned = align_state_dict(_renamed(reference), reference)
    assert list(aligned) == list(reference)
    assert all(torch.equal(aligned[k], reference[k]) for k in reference)
    other = timm.create_model("resnet10t", num_classes=7).state_dict()
    with pytest.raises(ValueError, match="has shape .* not the same network"):
        align_state_dict(_renamed(other), reference)
    with pytest.raises(ValueError, match="tensors, the model has"):
        align_state_dict(dict(list(_renamed(reference).items())[:-2]), reference)


def test_timm_encoders_load_a_checkpoint_from_another_implementation(tmp_path) -> None:
    source = timm.create_model("resnet10t")  # with its 1000-class head, as checkpoints ship
    torch.save(_renamed(source.state_dict()), tmp_path / "other-names.pth")
    image = create_encoder(
        "timm_image",
        model_name="resnet10t",
        img_size=32,
        checkpoint_path=str(tmp_path / "other-names.pth"),
    )
    stem = source.conv1[0].weight
    assert torch.equal(image.model.conv1[0].weight, stem)
    audio = create_encoder("audio_timm", model_name="resnet10t", checkpoint_path=str(tmp_path / "other-names.pth"),
                           sample_rate=8000, max_seconds=0.5, n_mels=16, n_fft=256, hop_length=128)  # fmt: skip
    # timm sums the RGB stem into the one spectrogram channel.
    assert torch.allclose(audio.model.conv1[0].weight, stem.sum(dim=1, keepdim=True))
    # The saved config rebuilds offline: the weights travel in the state dict, not the path.
    assert "checkpoint_path" not in image.to_config(tmp_path)
    assert image.to_config(tmp_path)["pretrained"] is False


def test_audio_timm_clip_normalisation_standardises_the_spectrogram() -> None:
    enc = create_encoder("audio_timm", model_name="resnet10t", normalize="clip", sample_rate=8000,
                         max_seconds=0.5, n_mels=16, n_fft=256, hop_length=128)  # fmt: skip
    seen = {}
    enc.model.conv1.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    enc.eval()({"waveform": 100 * torch.randn(2, 4000), "lengths": torch.tensor([4000, 4000])})
    x = seen["x"]
    assert torch.allclose(x.mean(dim=(-2, -1)), torch.zeros(2, 1), atol=1e-4)
    assert torch.allclose(x.std(dim=(-2, -1)), torch.ones(2, 1), atol=1e-3)
    with pytest.raises(ValueError, match="normalize"):
        create_encoder("audio_timm", model_name="resnet10t", normalize="batch")
