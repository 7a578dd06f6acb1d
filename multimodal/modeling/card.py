"""Model cards: a saved model's ``README.md``, written through ``huggingface_hub.ModelCard``
with its ``model-index`` (results per domain) in the YAML header, as the hub shows them.

``save_pretrained`` writes the card of what the folder holds (encoders and their weight
sources, fusion, head, the environment); ``train``, ``transfer`` and ``readapt`` add the
data it was trained on and its results per domain (``update_card``). The card is not in
``checksums.json``: it describes the weights, it is not one of them, and it may be updated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
LIBRARY = "transferfuse"
# Encoder config keys that say where its weights came from.
WEIGHT_SOURCES = ("model_name_or_path", "model_name", "checkpoint_path", "pretrained")

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

A multimodal model built with transferfuse: encoders -> fusion -> head.

## Model

| modality | encoder | weights from |
|---|---|---|
{% for row in encoders %}| {{ row.modality }} | {{ row.name }} | {{ row.source }} |
{% endfor %}
Fusion: `{{ fusion }}`. Head: {{ head }}.

## Training data

{{ data }}

## Results

{{ results }}

## Environment

{{ environment }}
"""


@dataclass(frozen=True)
class DomainResult:
    """One number of the card's ``model-index``: ``kind`` is what it measures (``source
    test``, ``zero-shot``, ``adapted``, ``forgetting``) on ``domain``'s ``split``."""

    domain: str
    kind: str
    metric: str
    value: float
    split: str = "test"


def _encoder_rows(config: Mapping[str, Any]) -> list[dict[str, str]]:
    rows = []
    for modality, enc in sorted(config.get("encoders", {}).items()):
        sources = [f"{k}={enc[k]}" for k in WEIGHT_SOURCES if enc.get(k) not in (None, False)]
        if enc.get("pretrained") is False:  # a named architecture, its weights not loaded
            source = f"random initialisation ({', '.join(sources) or 'built from a config'})"
        else:
            source = ", ".join(sources) or "random initialisation (built from a config)"
        rows.append({"modality": modality, "name": enc.get("name", "?"), "source": source})
    return rows


def _head_text(head: Mapping[str, Any], task: str) -> str:
    text = f"{task}, {head.get('num_classes', '?')} outputs"
    temperature = float(head.get("temperature") or 1.0)
    if temperature != 1.0:
        text += f"; temperature {temperature:.4f} (probabilities are softmax(logits / {temperature:.4f}))"
    return text


def _data_text(spec: Mapping[str, Any] | None, trained_on: Sequence[str] | None) -> str:
    if spec is None:
        return "Not recorded (the model was saved outside a run)."
    columns = ", ".join(f"`{c}` -> {m}" for m, c in sorted((spec.get("columns") or {}).items()))
    text = f"Dataset `{spec.get('path')}`; columns {columns or 'as generated'}; label `{spec.get('label', 'label')}`."
    if trained_on:
        text += f" Trained on the domains {', '.join(trained_on)}."
    return text


def _calibration_text(calibration: Mapping[str, Any] | None) -> str:
    if not calibration:
        return ""
    before, after = calibration.get("before", {}), calibration.get("after", {})
    return (f"\n\nCalibrated by temperature scaling: T = {calibration['temperature']:.4f}, fitted on "
            f"{calibration.get('rows', '?')} rows ({calibration.get('fitted_on', '?')}) of the model "
            f"`{calibration.get('model', '?')}`; ECE {before.get('ece', float('nan')):.4f} -> "
            f"{after.get('ece', float('nan')):.4f}, NLL {before.get('nll', float('nan')):.4f} -> "
            f"{after.get('nll', float('nan')):.4f} on those rows. Class predictions, and so every "
            "accuracy below, are the uncalibrated model's.")  # fmt: skip


def _results_text(results: Sequence[DomainResult]) -> str:
    if not results:
        return "None recorded yet."
    lines = ["| domain | split | measure | metric | value |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.domain} | {r.split} | {r.kind} | {r.metric} | {r.value:.4f} |" for r in results
    ]
    return "\n".join(lines)


def model_card(
    config: Mapping[str, Any], name: str, *, spec: Mapping[str, Any] | None = None,
    trained_on: Sequence[str] | None = None, results: Sequence[DomainResult] = (),
    environment: Mapping[str, Any] | None = None, calibration: Mapping[str, Any] | None = None,
) -> Any:  # fmt: skip
    """The ``huggingface_hub.ModelCard`` of a model: its ``config.json``, the data spec,
    the domains it trained on, its results per domain, the environment and, for a
    calibrated copy, its temperature. What it was given is also kept in the card's
    ``transferfuse`` header entry, so a later update or a copy carries it on."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    head = config.get("head", {})
    task = str(head.get("task", "classification"))
    dataset = str((spec or {}).get("path", "unknown"))
    evals = [
        EvalResult(task_type=task, task_name=f"multimodal {task}", dataset_type=dataset,
                   dataset_name=f"{dataset} ({r.domain})", dataset_config=r.domain, dataset_split=r.split,
                   metric_type=r.metric, metric_name=f"{r.kind} {r.metric}", metric_value=float(r.value))
        for r in results
    ]  # fmt: skip
    recorded = {k: v for k, v in (("data", _plain(spec)), ("trained_on", list(trained_on or []) or None),
                                  ("environment", _plain(environment)), ("calibration", _plain(calibration)))
                if v}  # fmt: skip
    data = ModelCardData(library_name=LIBRARY, tags=[LIBRARY, "multimodal", task], model_name=name,
                         eval_results=evals or None, datasets=[dataset] if spec else None,
                         transferfuse=recorded or None)  # fmt: skip
    env = ", ".join(
        f"{k} {v}"
        for k, v in sorted((environment or {}).items())
        if isinstance(v, (str, int, float))
    )
    return ModelCard.from_template(
        data, template_str=TEMPLATE, model_name=name, encoders=_encoder_rows(config),
        fusion=config.get("fusion", {}).get("name", "?"),
        head=_head_text(head, task),
        data=_data_text(spec, trained_on) + _calibration_text(calibration), results=_results_text(results),
        environment=env or "Not recorded.",
    )  # fmt: skip


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (a spec's tuples become lists), for the card's header."""
    import json

    return json.loads(json.dumps(value, default=str)) if value else None


def recorded(card: Any) -> dict[str, Any]:
    """What ``model_card`` kept of a card's data spec, training domains, environment and
    calibration (empty for a card written before it kept them)."""
    kept = getattr(card.data, "transferfuse", None) if card is not None else None
    return dict(kept) if isinstance(kept, Mapping) else {}


def read_results(card: Any) -> list[DomainResult]:
    """The per-domain results of a card's ``model-index``."""
    out = []
    for r in card.data.eval_results or []:
        kind = (r.metric_name or r.metric_type).removesuffix(f" {r.metric_type}")
        out.append(
            DomainResult(
                r.dataset_config or "",
                kind,
                r.metric_type,
                float(r.metric_value),
                r.dataset_split or "test",
            )
        )
    return out


def update_card(
    folder: str | Path, *, spec: Mapping[str, Any] | None = None, trained_on: Sequence[str] | None = None,
    results: Sequence[DomainResult] = (), environment: Mapping[str, Any] | None = None,
    calibration: Mapping[str, Any] | None = None, parent: str | Path | None = None,
) -> Path:  # fmt: skip
    """Rewrite ``folder``'s card with what is given added: results replace those of the same
    domain, measure and metric; the rest is kept, and what is not given (data, domains,
    environment, calibration) is the card's own, else ``parent``'s (the model this folder
    was made from: a calibrated copy carries its results and data)."""
    import json

    from huggingface_hub import ModelCard

    from ..core.io import write_text_atomic

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    old = ModelCard.load(folder / CARD_NAME) if (folder / CARD_NAME).is_file() else None
    before = (
        ModelCard.load(Path(parent) / CARD_NAME)
        if parent and (Path(parent) / CARD_NAME).is_file()
        else None
    )
    kept = [
        *(read_results(before) if before is not None else []),
        *(read_results(old) if old is not None else []),
    ]
    new_keys = {(r.domain, r.kind, r.metric) for r in results}
    merged = list(
        {
            (r.domain, r.kind, r.metric): r
            for r in kept
            if (r.domain, r.kind, r.metric) not in new_keys
        }.values()
    )
    merged += list(results)
    known = {**recorded(before), **recorded(old)}
    card = model_card(config, folder.name if folder.name != "best_model" else folder.parent.name,
                      spec=spec or known.get("data"), trained_on=trained_on or known.get("trained_on"),
                      results=merged, environment=environment or known.get("environment"),
                      calibration=calibration or known.get("calibration"))  # fmt: skip
    write_text_atomic(folder / CARD_NAME, str(card))
    return folder / CARD_NAME
