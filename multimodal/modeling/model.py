"""Model assembly: encoders per modality -> fusion -> head, with save/load."""

from __future__ import annotations

import inspect
import json
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from encoders import ENCODERS, Encoder, create_encoder
from fusion import Fusion, FusionOutput, create_fusion

from ..core.config import check_keys, read_yaml
from ..core.io import atomic_dir, verify_folder, write_checksums, write_json_atomic
from ..core.run_folder import RunFolder
from .heads import Head
from .pool import EncoderPool
from .processing import MultimodalProcessor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
Batch = dict[str, Any]
logger = logging.getLogger(__name__)


class Encoded(NamedTuple):
    """A batch's encoder outputs: tokens {m: [B, T_m, D_m]}, masks {m: [B, T_m]} (all False
    where a sample lacks the modality)."""

    tokens: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]


@dataclass
class ModelOutput:
    """logits: [B, C]; loss: task loss + aux_loss when labels are given; fused: [B, D];
    encoded: the encoder outputs the fusion read (what balancing methods inspect)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    fused: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    encoded: Encoded | None = None


def move_to(batch: Any, device: torch.device | str) -> Any:
    """Move every tensor of a nested batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def eval_mode(model: nn.Module) -> None:
    """``model.eval()``, leaving alone an encoder already in eval mode as a whole (a frozen
    one): walking a large pretrained network's modules costs more than evaluating a small
    fusion and head on cached features."""
    if not isinstance(model, MultimodalModel):
        model.eval()
        return
    model.training = model.encoders.training = False
    for name, child in model.named_children():
        if name != "encoders":
            child.eval()
    for encoder in model.encoders.values():
        if encoder.training:
            encoder.eval()


class MultimodalModel(nn.Module):
    """Encoders (one per modality key) -> fusion -> head.

    Modality keys are names chosen by the user ("caption", "img", or simply "text");
    each maps to an encoder. Keys are kept in sorted order everywhere.
    """

    def __init__(self, encoders: Mapping[str, Encoder], fusion: Fusion, head: Head) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: encoders[m] for m in sorted(encoders)})
        if list(self.encoders) != fusion.modalities:
            raise ValueError(
                f"fusion was built for {fusion.modalities}, encoders are {list(self.encoders)}"
            )
        for m, enc in self.encoders.items():
            if fusion.modality_dims[m] != enc.out_dim:
                raise ValueError(
                    f"fusion expects dim {fusion.modality_dims[m]} for {m!r}, its encoder gives {enc.out_dim}"
                )
        self.fusion = fusion
        self.head = head
        _own_storage(self)

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def processor(self) -> MultimodalProcessor:
        """The encoders' processors and the head's task: raw samples -> Batch, no weights."""
        return MultimodalProcessor(
            {m: e.processor for m, e in self.encoders.items()}, self.head.task
        )

    def preprocess(self, samples: Sequence[Mapping[str, Any]], label_key: str = "label") -> Batch:
        """Raw samples -> Batch (see ``MultimodalProcessor``)."""
        return self.processor(samples, label_key)

    def encode(self, batch: Batch) -> Encoded:
        """Run every encoder on the processor's tensors of ``batch``."""
        tokens, masks = {}, {}
        for m, enc in self.encoders.items():
            out = enc(batch[m])
            tokens[m] = out.tokens
            masks[m] = out.mask & batch["present"][m].to(out.mask.device)[:, None]
        return Encoded(tokens, masks)

    def forward(self, batch: Batch, encoded: Encoded | None = None) -> ModelOutput:
        """Logits (and the loss, when ``batch`` has labels) of a batch of processor tensors.

        With ``encoded``, encoder outputs computed earlier (the feature cache, attributions),
        the encoders are skipped and ``batch`` only needs its labels, if any; the way
        ``inputs_embeds`` stands in for ``input_ids`` in transformers.
        """
        encoded = encoded if encoded is not None else self.encode(batch)
        logits, fused = self.fuse(*encoded)
        loss = None
        if batch.get("labels") is not None:
            loss = self.head.loss(logits, batch["labels"])
            if fused.aux_loss is not None:
                loss = loss + fused.aux_loss
        return ModelOutput(logits, loss, fused.aux_loss, fused.fused, fused.info, encoded)

    def fuse(
        self, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, FusionOutput]:
        """Logits and the fusion's output from encoder outputs."""
        fused = self.fusion(tokens, masks)
        if getattr(self.fusion, "combines_logits", False):
            # Late fusion: the head decides per modality; the decisions are weighted.
            per_modality = torch.stack(
                [self.head(v) for v in fused.info["modality_vectors"].values()], dim=1
            )  # B x M x C
            logits = torch.einsum(
                "bm,bmc->bc", fused.info["modality_weights"].to(per_modality.dtype), per_modality
            )
        else:
            logits = self.head(fused.fused)
        return logits, fused

    def unimodal_logits(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        """{m: logits [B, C] with only m present}: every other modality goes through the
        fusion's missing-modality path, as ``drop_modalities`` does at evaluation."""
        tokens, masks = encoded
        out = {}
        for m in self.modalities:
            alone = {n: k if n == m else torch.zeros_like(k) for n, k in masks.items()}
            out[m] = self.fuse(tokens, alone)[0]
        return out

    @torch.no_grad()
    def predict(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Eval-mode predictions for raw samples: logits, and probs/labels for classification."""
        was_training = self.training
        self.eval()
        try:
            batch = move_to(
                self.preprocess([{k: v for k, v in s.items() if k != "label"} for s in samples]),
                self.device,
            )
            logits = self(batch).logits.float()
        finally:
            self.train(was_training)
        return self.head.task.outputs(logits)

    def config(self, save_dir: Path) -> dict[str, Any]:
        """The JSON config that rebuilds this architecture offline (extra files go in save_dir)."""
        encoders = {}
        for m, enc in self.encoders.items():
            folder = save_dir / "encoders" / m
            folder.mkdir(parents=True, exist_ok=True)
            encoders[m] = {"name": _registry_name(enc), **enc.to_config(folder)}
        fusion_kwargs = getattr(self.fusion, "init_kwargs", None)
        if fusion_kwargs is None:
            raise ValueError("save_pretrained needs a fusion built with fusion.create_fusion")
        fusion_cfg = {k: v for k, v in fusion_kwargs.items() if k != "modality_dims"}
        return {
            "format_version": FORMAT_VERSION,
            "encoders": encoders,
            "fusion": {"name": _registry_name(self.fusion), **fusion_cfg},
            "head": self.head.config(),
        }

    def save_pretrained(self, save_dir: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors``, tokenizer files and the model card
        (``README.md``, ``modeling.card``), atomically."""
        from ..core.provenance import environment
        from .card import CARD_NAME, model_card

        with atomic_dir(save_dir) as tmp:
            config = self.config(tmp)
            write_json_atomic(tmp / CONFIG_NAME, config)
            # Tied weights share storage; safetensors refuses that, so each is stored apart.
            state = {k: v.detach().clone().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            write_checksums(tmp)
            card = model_card(config, Path(save_dir).name, environment=environment())
            (tmp / CARD_NAME).write_text(str(card))
        return Path(save_dir)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None,
                    commit_message: str = "Upload transferfuse model") -> Any:  # fmt: skip
        """Save to a temporary folder and upload it to the hub repository ``repo_id``
        (``huggingface_hub.HfApi.upload_folder``); returns the hub's commit info."""
        import tempfile

        from .hub import push_folder

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / repo_id.split("/")[-1])
            return push_folder(folder, repo_id, private=private, token=token, revision=revision,
                               commit_message=commit_message)  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        save_dir: str | Path,
        device: str | torch.device = "cpu",
        *,
        trust_remote_code: bool = False,
        allow_unverified: bool = False,
        revision: str | None = None,
        token: str | bool | None = None,
    ) -> MultimodalModel:
        """Rebuild from a ``save_pretrained`` folder, a run folder holding ``best_model/``, or
        a hub id (``org/name`` at ``revision``, through ``snapshot_download``; the local HF
        cache with ``HF_HUB_OFFLINE=1``): JSON + safetensors, never pickle.

        Every file must match the folder's ``checksums.json``; a folder without one is refused
        unless ``allow_unverified``. Remote code runs only if the caller passes
        ``trust_remote_code``: a ``trust_remote_code`` key in the folder's own config is
        ignored, since whoever wrote the folder is not the one taking the risk.
        """
        from .hub import resolve_pretrained

        save_dir = _model_folder(resolve_pretrained(save_dir, revision, token))
        verify_folder(save_dir, allow_unverified)
        config = json.loads((save_dir / CONFIG_NAME).read_text())
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{save_dir}: unsupported format_version {config.get('format_version')!r}"
            )
        for m, enc_cfg in config["encoders"].items():
            for key in getattr(ENCODERS.get(enc_cfg["name"]), "path_kwargs", ()):
                if enc_cfg.get(key) is not None:
                    enc_cfg[key] = str(save_dir / "encoders" / m / enc_cfg[key])
            _caller_trust(enc_cfg, trust_remote_code, f"{save_dir}: encoders.{m}")
        model = build_model(config)
        model.load_state_dict(load_file(str(save_dir / WEIGHTS_NAME)), strict=True)
        return model.to(device).eval()


def _model_folder(save_dir: Path) -> Path:
    """The saved-model folder of ``save_dir`` (itself, or a run folder's ``best_model/``),
    with its config and safetensors weights; pickled weights are refused by name."""
    save_dir = RunFolder(save_dir).saved_model()
    if not (save_dir / WEIGHTS_NAME).is_file():
        pickles = sorted(
            p.name
            for p in save_dir.glob("*")
            if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")
        )
        if pickles:
            raise ValueError(
                f"{save_dir}: refusing to load pickle file(s) {pickles}; only {WEIGHTS_NAME} "
                "(safetensors) is read. Convert trusted weights with safetensors.torch.save_file."
            )
    if not (save_dir / CONFIG_NAME).is_file() or not (save_dir / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{save_dir} has no {CONFIG_NAME} and {WEIGHTS_NAME}")
    return save_dir


def _caller_trust(enc_cfg: dict[str, Any], trust_remote_code: bool, where: str) -> None:
    """Replace a saved encoder config's ``trust_remote_code`` by the caller's choice."""
    if enc_cfg.pop("trust_remote_code", False) and not trust_remote_code:
        logger.warning(
            "%s asks for trust_remote_code; ignored: only the caller can allow remote code "
            "(trust_remote_code=True, --trust-remote-code)",
            where,
        )
    if (
        trust_remote_code
        and "trust_remote_code" in inspect.signature(ENCODERS.get(enc_cfg["name"])).parameters
    ):
        enc_cfg["trust_remote_code"] = True


def _own_storage(module: nn.Module) -> None:
    """Give every buffer that views part of a larger storage (torchaudio's periodic STFT
    window is the first 256 of 257 values) a storage of its own: safetensors, and with it
    accelerate's ``load_state``, refuses to load into a tensor that does not cover its
    storage, so a resumed run would fail on it."""
    for sub in module.modules():
        for name, buffer in list(sub._buffers.items()):
            if buffer is not None and buffer.untyped_storage().nbytes() != buffer.nbytes:
                sub._buffers[name] = buffer.clone()


def _registry_name(module: nn.Module) -> str:
    name = getattr(module, "registry_name", None)
    if name is None:
        raise ValueError(
            f"{type(module).__name__} is not registered; save_pretrained cannot rebuild it"
        )
    return name


def load_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A config dict from a dict or a YAML/JSON file."""
    if isinstance(config, (str, Path)):
        return read_yaml(config)
    return dict(config)


def reads_data_columns(enc_cfg: Mapping[str, Any]) -> bool:
    """An encoder of named columns (``tabular_mlp``) that names none: it reads the columns
    that ``data.columns`` maps to its modality."""
    if not isinstance(enc_cfg, Mapping) or "name" not in enc_cfg:
        return False
    takes = ENCODERS.accepted_kwargs(enc_cfg["name"])
    return {"numerical", "categorical"} <= takes and not (
        enc_cfg.get("numerical") or enc_cfg.get("categorical")
    )


def _with_data_columns(m: str, enc_cfg: dict[str, Any],
                       samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """``enc_cfg`` with the columns of modality ``m`` in the training rows: those whose
    values are all numbers are numerical, the others categorical (their values, sorted)."""
    values = [s.get(m) for s in samples if isinstance(s.get(m), Mapping)]
    if not values:
        raise ValueError(
            f"encoders.{m} ({enc_cfg['name']}) names no columns, and the training rows have "
            f"no {m} columns: list them under data.columns.{m}, or under encoders.{m}.numerical "
            f"and encoders.{m}.categorical"
        )
    numerical: list[str] = []
    categorical: dict[str, list[Any]] = {}
    for column in dict.fromkeys(c for v in values for c in v):
        seen = [v[column] for v in values if v.get(column) is not None]
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in seen):
            numerical.append(column)
        else:
            categorical[column] = sorted(set(seen), key=str)
    logger.info("encoders.%s reads data.columns.%s: numerical %s, categorical %s", m, m,
                numerical, list(categorical))  # fmt: skip
    return {**enc_cfg, "numerical": numerical, "categorical": categorical}


def build_model(
    config: Mapping[str, Any] | str | Path,
    samples: Sequence[Mapping[str, Any]] | Callable[[], Sequence[Mapping[str, Any]]] | None = None,
    seed: int | None = None,
    encoders: EncoderPool | None = None,
) -> MultimodalModel:
    """Build a model from ``{"encoders": {m: {name, ...}}, "fusion": {name, dim, ...}, "head": {...}}``.

    With ``samples`` (raw training rows, or a function that reads them, called only when
    an encoder fits on rows), data-dependent parts are fitted on them: a tokenizer for text
    encoders built from a config, tabular standardisation statistics.
    With ``seed``, the random initialisation is seeded (python, numpy, torch): each encoder
    from (seed, modality) and the fusion and head from the seed, so no part's weights depend
    on which other parts were built. ``encoders``: a pool to take encoders from and add
    them to (``modeling.pool``), for callers that never train or change them.
    """
    if seed is not None:
        from accelerate.utils import set_seed

        set_seed(seed)
    config = load_config(config)
    check_keys(config, ("encoders", "fusion", "head", "format_version"))
    if not config.get("encoders"):
        raise ValueError("model config needs at least one entry under 'encoders'")
    built: dict[str, Encoder] = {}
    if samples is not None and any(reads_data_columns(e) for e in config["encoders"].values()):
        samples = samples() if callable(samples) else samples  # read once, for every encoder
    # Sorted: the initialisation must not depend on the order of keys in a config file.
    for m, enc_cfg in sorted(config["encoders"].items()):
        enc_cfg = dict(enc_cfg)
        if "name" not in enc_cfg:
            raise ValueError(f"encoders.{m}: needs a 'name' (one of the registered encoders)")
        if reads_data_columns(enc_cfg) and samples is not None:
            enc_cfg = _with_data_columns(m, enc_cfg, samples)  # type: ignore[arg-type]

        def build(m: str = m, enc_cfg: dict[str, Any] = enc_cfg) -> Encoder:
            kwargs = {k: v for k, v in enc_cfg.items() if k != "name"}
            if seed is None:
                return create_encoder(enc_cfg["name"], **kwargs)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(zlib.crc32(f"{seed}:{m}".encode()))
                return create_encoder(enc_cfg["name"], **kwargs)

        built[m] = encoders.get(m, enc_cfg, seed, build) if encoders is not None else build()
        if samples is not None and built[m].fits_on_data():
            if callable(samples):
                samples = samples()
            values = [s.get(m) for s in samples]
            built[m].fit([v for v in values if not built[m].is_missing(v)])
    fusion_cfg = dict(config.get("fusion") or {"name": "concat"})
    fusion_name = fusion_cfg.pop("name", "concat")
    dim = int(fusion_cfg.pop("dim", 256))
    fusion = create_fusion(fusion_name, {m: e.out_dim for m, e in built.items()}, dim, **fusion_cfg)
    head = Head(fusion.out_dim, **(config.get("head") or {}))
    return MultimodalModel(built, fusion, head)
