from __future__ import annotations

import pytest
import torch

import encoders
from tests.conftest import TEXTS, TINY_BERT


def test_config_model_trains_its_tokenizer_and_masks_padding() -> None:
    enc = encoders.create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS)
    assert len(enc.tokenizer) <= TINY_BERT["vocab_size"]
    inputs = enc.processor(["red circle", "a much longer text about a quiet high whistle"])
    out = enc(inputs)
    assert out.mask[0].sum() < out.mask[1].sum()
    assert out.mask.sum().item() == inputs["attention_mask"].sum().item()


def test_empty_text_is_missing_and_non_strings_are_rejected() -> None:
    enc = encoders.create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS)
    assert enc.is_missing("") and enc.is_missing("   ") and not enc.is_missing("a")
    with pytest.raises(TypeError, match="text sample 1: expected a str"):
        enc.processor(["ok", 3])


def test_without_tokenizer_the_error_says_what_to_do() -> None:
    enc = encoders.create_encoder("hf_text", config=TINY_BERT)
    with pytest.raises(ValueError, match="call fit"):
        enc.processor(["hello"])
    enc.fit(TEXTS)
    assert enc.processor(["hello"])["input_ids"].shape[0] == 1


def test_local_folder_in_hub_layout_round_trips(tmp_path) -> None:
    enc = encoders.create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS, max_length=16)
    enc.model.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    loaded = encoders.create_encoder("hf_text", model_name_or_path=str(tmp_path)).eval()
    enc.eval()
    a = enc(enc.processor(TEXTS[:2])).tokens
    b = loaded(loaded.processor(TEXTS[:2])).tokens
    assert a.shape == b.shape and (a - b).abs().max() < 1e-5


def test_a_checkpoint_with_a_pooler_loads_without_it_and_without_a_load_report(tmp_path) -> None:
    import logging
    import pickle

    import transformers

    config = transformers.BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    transformers.BertModel(config, add_pooling_layer=True).save_pretrained(tmp_path)
    trained = encoders.create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS)
    trained.tokenizer.save_pretrained(tmp_path)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    library = logging.getLogger("transformers")
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()  # a CLI test in this process may have quieted it
    library.addHandler(handler)
    try:
        loaded = encoders.create_encoder("hf_text", model_name_or_path=str(tmp_path))
    finally:
        library.removeHandler(handler)
        transformers.logging.set_verbosity(level)
    assert loaded.model.pooler is None
    assert not any("LOAD REPORT" in message for message in seen), seen
    # The library's own class, as it was: picklable by name, its ignore list unchanged.
    assert type(loaded.model) is transformers.BertModel
    assert transformers.BertModel._keys_to_ignore_on_load_unexpected is None
    assert pickle.loads(pickle.dumps(loaded)).model.pooler is None


def test_a_checkpoints_own_model_code_loads_when_trusted_and_only_then(tmp_path) -> None:
    import json

    import transformers

    config = transformers.BertConfig(**{k: v for k, v in TINY_BERT.items() if k != "model_type"})
    transformers.BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    trained = encoders.create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS)
    trained.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "modeling_shipped.py").write_text(
        "from transformers import BertModel\n\n\nclass ShippedModel(BertModel):\n    pass\n"
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["auto_map"] = {"AutoModel": "modeling_shipped.ShippedModel"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    trusted = encoders.create_encoder(
        "hf_text", model_name_or_path=str(tmp_path), trust_remote_code=True
    )
    assert type(trusted.model).__name__ == "ShippedModel"  # what AutoModel would load
    plain = encoders.create_encoder("hf_text", model_name_or_path=str(tmp_path))
    assert type(plain.model) is transformers.BertModel


def test_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        encoders.create_encoder("hf_text")


@pytest.mark.parametrize("kind", ["bpe"])
def test_tokenizer_training_is_deterministic(kind: str) -> None:
    texts = [
        f"{w} {v} tokens and words number {i}"
        for i, (w, v) in enumerate(zip(TEXTS * 5, reversed(TEXTS * 5), strict=True))
    ]
    a = encoders.train_tokenizer(texts, 80, kind)
    b = encoders.train_tokenizer(texts, 80, kind)
    assert a.get_vocab() == b.get_vocab()
    assert a(TEXTS)["input_ids"] == b(TEXTS)["input_ids"]


def test_wordpiece_option() -> None:
    enc = encoders.create_encoder(
        "hf_text", config=TINY_BERT, train_texts=TEXTS, tokenizer_kind="wordpiece"
    )
    ids = enc.processor(["red circle"])["input_ids"][0].tolist()
    assert ids[0] == enc.tokenizer.cls_token_id and ids[-1] == enc.tokenizer.sep_token_id


def test_pickled_hub_weights_are_refused_and_remote_code_is_opt_in(tmp_path, caplog) -> None:
    enc = encoders.create_encoder("hf_text", config=TINY_BERT, train_texts=TEXTS, max_length=16)
    enc.model.save_pretrained(tmp_path)
    enc.tokenizer.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()  # pickled weights only
    torch.save(enc.model.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / "pytorch_model.bin").is_file() and not (
        tmp_path / "model.safetensors"
    ).exists()
    with pytest.raises(OSError, match="safetensors"):
        encoders.create_encoder("hf_text", model_name_or_path=str(tmp_path))
    with caplog.at_level("WARNING"):
        encoders.create_encoder(
            "hf_text", config=TINY_BERT, train_texts=TEXTS, trust_remote_code=True
        )
    assert "trust_remote_code=True" in caplog.text
