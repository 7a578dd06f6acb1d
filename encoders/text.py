"""Text encoder: any Hugging Face ``transformers`` AutoModel, token states out."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from multimodal.core.resources import local_or_hub

from ._augment import augment_text
from ._base import AttackSurface, Encoder, EncoderOutput, Processor
from ._registry import register_encoder, register_processor

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_tokenizer(
    texts: Sequence[str], vocab_size: int, kind: str = "bpe", lowercase: bool = True
) -> PreTrainedTokenizerFast:
    """Train a small BPE or WordPiece tokenizer on ``texts`` with the ``tokenizers`` library.

    BPE is the default because its trainer is deterministic; the WordPiece trainer breaks
    ties between equally frequent merges in hash-map order, so two runs on the same texts
    can give different vocabularies (and different models for the same seed).
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = list(SPECIAL_TOKENS.values())  # [PAD] gets id 0
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        )
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
    else:
        raise ValueError(f"tokenizer kind must be 'wordpiece' or 'bpe', got {kind!r}")
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("cannot train a tokenizer: no non-empty text was given")
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def _without_pooler(load: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """Load without the [CLS] pooler where the model has one: its output is never used here."""
    try:
        return load(*args, add_pooling_layer=False, **kwargs)
    except TypeError as err:
        if "add_pooling_layer" not in str(err):
            raise
        return load(*args, **kwargs)


_ABSENT = object()
# One load at a time changes a class's list: two would restore each other's.
_CLASS_PATCH = threading.Lock()


def _pretrained_without_pooler(path: str, hub: dict[str, Any], **kwargs: Any) -> nn.Module:
    """``AutoModel.from_pretrained`` without the pooler (``_without_pooler``), the class the
    config maps to told for the load that the checkpoint's pooler weights are unread on
    purpose: else transformers logs a load report listing them as unexpected on every
    load. AutoModel still chooses what loads (the checkpoint's own code when trusted, an
    adapter's base model); the class is the library's own, not a subclass, so the model
    pickles by name."""
    try:
        config = AutoConfig.from_pretrained(path, **hub)
    except (OSError, ValueError, KeyError):  # no config of its own: AutoModel decides
        return _without_pooler(AutoModel.from_pretrained, path, **hub, **kwargs)
    cls = MODEL_MAPPING.get(type(config), None)
    load = functools.partial(AutoModel.from_pretrained, path, config=config, **hub, **kwargs)
    if cls is None:
        return _without_pooler(load)
    with _CLASS_PATCH, _ignoring_unexpected(cls, r"(^|\.)pooler\."):
        return _without_pooler(load)


@contextlib.contextmanager
def _ignoring_unexpected(cls: type, pattern: str) -> Iterator[None]:
    """``cls._keys_to_ignore_on_load_unexpected`` plus ``pattern`` inside (a model reads it
    when built), as it was after."""
    own = cls.__dict__.get("_keys_to_ignore_on_load_unexpected", _ABSENT)
    cls._keys_to_ignore_on_load_unexpected = [
        *(cls._keys_to_ignore_on_load_unexpected or []),
        pattern,
    ]
    try:
        yield
    finally:
        if own is _ABSENT:
            del cls._keys_to_ignore_on_load_unexpected
        else:
            cls._keys_to_ignore_on_load_unexpected = own


def _largest_module_list(model: nn.Module) -> list[nn.Module]:
    """The model's stack of layers: the longest ModuleList (BERT's encoder.layer, GPT-2's h...)."""
    best: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best


@register_processor("text")
class TextProcessor(Processor):
    """Texts -> ``input_ids``, ``attention_mask`` (and ``token_type_ids``) [B, T], padded to the
    longest text and truncated at ``max_length``. Blank text counts as absent.

    Without a tokenizer, ``fit`` trains one of ``vocab_size`` tokens (``tokenizer_kind``:
    bpe or wordpiece) on the training texts.
    """

    modality = "text"

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast | None = None,
        max_length: int = 128,
        tokenizer_kind: str = "bpe",
        vocab_size: int | None = None,
    ) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.tokenizer_kind, self.vocab_size = tokenizer_kind, vocab_size

    def fit(self, values: Sequence[Any]) -> TextProcessor:
        if self.tokenizer is None:
            if self.vocab_size is None:
                raise ValueError(
                    "a text processor without a tokenizer needs vocab_size to train one"
                )
            texts = [v for v in values if isinstance(v, str)]
            self.tokenizer = train_tokenizer(texts, self.vocab_size, self.tokenizer_kind)
        return self

    def fits_on_data(self) -> bool:
        return self.tokenizer is None  # fit trains a tokenizer only when there is none

    def is_missing(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and not value.strip())

    def __call__(self, values: Sequence[Any]) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError(
                "hf_text has no tokenizer yet: pass tokenizer= or train_texts=, or call fit(texts)"
            )
        texts: list[str] = []
        for i, value in enumerate(values):
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"text sample {i}: expected a str or None, got {type(value).__name__}"
                )
            texts.append(self._kept_part(value or ""))
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {
            k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }

    def _kept_part(self, text: str) -> str:
        """The start of ``text`` that holds every token truncation keeps, cut before
        tokenizing: the cost of a text is bounded by ``max_length``, not by its size.

        The cut falls on whitespace, which every word-level pre-tokenizer splits on, so the
        words before it tokenize as in the whole text; it is taken once those words give
        more than ``max_length`` tokens, and pushed further (x4, three times at most) while
        they do not. A text with no whitespace in reach is cut at the character budget, and
        one whose first 64 budgets are mostly whitespace the tokenizer drops, at the last.
        """
        budget = self.max_length * (self._longest_token() + 1)
        for _ in range(4):
            if len(text) <= budget:
                return text
            head = text[:budget]
            cut = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
            if cut <= 0:
                return head
            ids = self.tokenizer(head[:cut], add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_length:
                return head[:cut]
            budget *= 4
        return text[: budget // 4]

    def _longest_token(self) -> int:
        """Characters in the vocabulary's longest token (an upper bound on what one token
        covers), computed once per tokenizer."""
        if getattr(self, "_longest", None) is None or self._longest[0] is not self.tokenizer:
            vocab = self.tokenizer.get_vocab()
            self._longest = (self.tokenizer, max((len(t) for t in vocab), default=1))
        return self._longest[1]

    @property
    def padding_side(self) -> str:  # type: ignore[override]
        return self.tokenizer.padding_side if self.tokenizer is not None else "right"

    def pad_value(self, key: str) -> float:
        return self.tokenizer.pad_token_id if key == "input_ids" else 0

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        if self.tokenizer is None:
            raise ValueError("cannot save a text processor before it has a tokenizer")
        self.tokenizer.save_pretrained(save_dir / "tokenizer")
        return {"tokenizer": "tokenizer", "max_length": self.max_length,
                "tokenizer_kind": self.tokenizer_kind, "vocab_size": self.vocab_size}  # fmt: skip

    @classmethod
    def from_config(cls, config: dict[str, Any], save_dir: Path) -> TextProcessor:
        config = dict(config)
        tokenizer = AutoTokenizer.from_pretrained(str(save_dir / config.pop("tokenizer")))
        return cls(tokenizer, **config)


@register_encoder("hf_text")
class HFTextEncoder(Encoder):
    """A ``transformers`` AutoModel over text; outputs every token state and the attention mask.

    Give either ``model_name_or_path`` (hub id, local folder, or ``package:NAME/path`` for a
    folder inside an installed package; the tokenizer comes from the same place unless
    ``tokenizer`` says otherwise; ``pretrained: false`` keeps the architecture and
    tokenizer but initialises the weights at random) or ``config``, a dict with a
    ``model_type`` for a small randomly initialised model. With ``config`` and no
    ``tokenizer``, a tokenizer of ``config['vocab_size']`` tokens is trained on
    ``train_texts`` (or later, on the values passed to ``fit``).

    ``attn_implementation``: transformers' attention kernel, "sdpa" (torch's fused
    scaled-dot-product attention, flash kernels on GPUs that have them) by default; "eager"
    for a model without it, or None for transformers' own choice.

    tokens: [B, T, hidden_size]; mask: [B, T] (attention mask). Pooling happens downstream.
    """

    modality = "text"
    path_kwargs = ("tokenizer",)

    def __init__(
        self,
        model_name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        tokenizer: str | None = None,
        train_texts: Sequence[str] | None = None,
        tokenizer_kind: str = "bpe",
        max_length: int = 128,
        pretrained: bool = True,
        revision: str | None = None,
        trust_remote_code: bool = False,
        use_safetensors: bool = True,
        attn_implementation: str | None = "sdpa",
    ) -> None:
        super().__init__()
        if model_name_or_path is not None:
            model_name_or_path = local_or_hub(model_name_or_path, "hf_text model_name_or_path")
        if tokenizer is not None:
            tokenizer = local_or_hub(tokenizer, "hf_text tokenizer")
        if trust_remote_code:
            logger.warning(
                "hf_text %s: trust_remote_code=True, code from the hub runs on this machine",
                model_name_or_path or (config or {}).get("model_type"),
            )
        if (model_name_or_path is None) == (config is None):
            raise ValueError("hf_text needs exactly one of model_name_or_path or config")
        hub = {"revision": revision, "trust_remote_code": trust_remote_code}
        attention = {"attn_implementation": attn_implementation} if attn_implementation else {}
        if config is not None:
            config = dict(config)
            if "model_type" not in config:
                raise ValueError(
                    f"hf_text config needs a 'model_type' key, got keys {sorted(config)}"
                )
            config.setdefault("pad_token_id", 0)
            hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
            model = _without_pooler(
                AutoModel.from_config, hf_config, trust_remote_code=trust_remote_code, **attention
            )
        elif pretrained:
            # Pickled weights (pytorch_model.bin) are refused unless the user opts out.
            model = _pretrained_without_pooler(
                model_name_or_path, hub, use_safetensors=use_safetensors, **attention
            )
        else:
            hf_config = AutoConfig.from_pretrained(model_name_or_path, **hub)
            model = _without_pooler(
                AutoModel.from_config, hf_config, trust_remote_code=trust_remote_code, **attention
            )
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        self.model = model
        self.out_dim = int(model.config.hidden_size)
        loaded = None
        source = tokenizer or model_name_or_path
        if source is not None:
            loaded = AutoTokenizer.from_pretrained(source, **hub)
            if loaded.pad_token is None:  # GPT-style tokenizers ship without one
                loaded.pad_token = loaded.eos_token or loaded.unk_token
        self.processor = TextProcessor(loaded, max_length, tokenizer_kind, model.config.vocab_size)
        if loaded is None and train_texts is not None:
            self.fit(train_texts)

    @property
    def tokenizer(self) -> PreTrainedTokenizerFast | None:
        return self.processor.tokenizer

    @property
    def max_length(self) -> int:
        return self.processor.max_length

    def attack_surface(self, inputs: dict[str, torch.Tensor]) -> AttackSurface:
        """Input token embeddings, in units of the embedding table's standard deviation;
        padding is left alone. ``forward`` takes ``inputs_embeds`` in place of ``input_ids``."""
        table = self.model.get_input_embeddings()
        embeds = table(inputs["input_ids"])
        scale = table.weight.detach().float().std().to(embeds.dtype)
        mask = inputs["attention_mask"].bool()[..., None]
        return AttackSurface("inputs_embeds", embeds.detach(), scale, mask)

    def augment(self, inputs: dict[str, torch.Tensor], strength: str) -> dict[str, torch.Tensor]:
        """Token dropout (weak) or span masking (strong): ``encoders._augment``."""
        tokenizer = self.tokenizer
        special = tokenizer.all_special_ids if tokenizer is not None else []
        mask_id = tokenizer.mask_token_id if tokenizer is not None else None
        return augment_text(inputs, strength, special, mask_id)

    def forward(self, inputs: dict[str, torch.Tensor]) -> EncoderOutput:
        if "inputs_embeds" in inputs:
            inputs = {k: v for k, v in inputs.items() if k != "input_ids"}
        out = self.model(**inputs)
        return EncoderOutput(out.last_hidden_state, inputs["attention_mask"].bool())

    def layer_blocks(self) -> list[nn.Module]:
        return _largest_module_list(self.model)

    def to_config(self, save_dir: Path) -> dict[str, Any]:
        if self.tokenizer is None:
            raise ValueError("cannot save hf_text before it has a tokenizer")
        processor = self.processor.to_config(save_dir)
        return {
            "config": self.model.config.to_dict(),
            "tokenizer": processor["tokenizer"],
            "max_length": processor["max_length"],
            "tokenizer_kind": processor["tokenizer_kind"],
        }
