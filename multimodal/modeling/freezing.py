"""Freezing strategies: which encoder parameters train (head, top_k, full, lora)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.registry import Registry

if TYPE_CHECKING:  # torch is imported where it is used: the names here are read at start-up
    from torch import nn

# name -> how one encoder is frozen: ``freeze(name, encoder, blocks, top_k, lora)``, called
# after every parameter was made trainable. What `apply_strategy`, the adaptation arms of the
# same names and `multimodal readapt --strategy` take.
FREEZERS: Registry[Any] = Registry("freezing strategy")


@FREEZERS.register("full")
def _full(name: str, encoder: Any, blocks: list[Any], top_k: int, lora: dict[str, Any]) -> None:
    """Every parameter trains."""


@FREEZERS.register("head")
def _head(name: str, encoder: Any, blocks: list[Any], top_k: int, lora: dict[str, Any]) -> None:
    """The encoder is frozen: fusion and head train."""
    encoder.requires_grad_(False)


@FREEZERS.register("top_k")
def _top_k(name: str, encoder: Any, blocks: list[Any], top_k: int, lora: dict[str, Any]) -> None:
    """The last k of the encoder's ``layer_blocks()`` train, the rest (embeddings included)
    is frozen; an encoder without blocks (tabular) trains whole."""
    if blocks:
        encoder.requires_grad_(False)
        for block in blocks[-top_k:]:
            block.requires_grad_(True)


@FREEZERS.register("lora")
def _lora(name: str, encoder: Any, blocks: list[Any], top_k: int, lora: dict[str, Any]) -> None:
    """peft LoRA adapters on the Linear/Conv2d layers of the blocks, base weights frozen; an
    encoder without blocks trains whole."""
    if blocks:
        encoder.requires_grad_(False)
        _inject_lora(encoder, blocks, name, lora)


STRATEGIES = tuple(FREEZERS.names())


def apply_strategy(
    model: Any, strategy: str, top_k: int = 1, lora: dict[str, Any] | None = None
) -> dict[str, int]:
    """Set ``requires_grad`` on the encoders by strategy (``FREEZERS``); fusion and head
    always train. Returns counts of trainable and total parameters."""
    if strategy not in FREEZERS:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    freeze = FREEZERS.get(strategy)
    model.requires_grad_(True)
    for name, enc in model.encoders.items():
        freeze(name, enc, enc.layer_blocks(), top_k, lora or {})
    return count_parameters(model)


def frozen_encoders(model: Any) -> list[str]:
    """Encoders with no trainable parameter: they run in eval mode and can be cached."""
    return [
        m for m, enc in model.encoders.items() if not any(p.requires_grad for p in enc.parameters())
    ]


def encoder_modules(model: Any) -> tuple[int, ...]:
    """The identities of the model's encoder modules: models with the same ones share their
    weights and what is frozen in them (one plan's copies, or the seeds' plans on one pool)."""
    return tuple(id(e) for e in model.encoders.values())


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def _inject_lora(
    encoder: nn.Module, blocks: list[nn.Module], name: str, options: dict[str, Any]
) -> None:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if not any(isinstance(m, LoraLayer) for m in encoder.modules()):  # inject once
        _inject(encoder, blocks, name, options, LoraConfig, inject_adapter_in_model)
    for param_name, param in encoder.named_parameters():
        param.requires_grad = "lora_" in param_name


def _inject(
    encoder: nn.Module,
    blocks: list[nn.Module],
    name: str,
    options: dict[str, Any],
    LoraConfig: Any,
    inject: Any,
) -> None:
    from torch import nn

    block_ids = {id(b) for b in blocks}
    targets = []
    for block_name, block in encoder.named_modules():
        if id(block) in block_ids:
            targets += [
                f"{block_name}.{n}"
                for n, mod in block.named_modules()
                if n and isinstance(mod, (nn.Linear, nn.Conv2d))
            ]
    if not targets:
        raise ValueError(f"encoder {name!r} has no Linear or Conv2d layer in its blocks for LoRA")
    config = LoraConfig(
        r=int(options.get("r", 8)),
        lora_alpha=int(options.get("alpha", 16)),
        lora_dropout=float(options.get("dropout", 0.0)),
        target_modules=targets,
    )
    inject(config, encoder)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into their base layers, leaving the plain architecture (for saving)."""
    from peft.tuners.lora import LoraLayer

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, child_name, child.get_base_layer())
    for module in model.modules():
        if hasattr(module, "peft_config"):
            del module.peft_config
    return model
