"""Modality-level interpretability: what each modality contributes, how a mixture of experts
routes modalities and domains, and where cross-modal attention looks.

- Drop-one ablation: the predicted class's probability with every modality present minus
  the same with one modality made absent (the model's own missing-modality path).
- Integrated gradients (Captum) on the encoder outputs, from an all-zero baseline, summed
  over each modality's tokens and feature dimensions.
- Expert load of a mixture-of-experts fusion, per modality and per domain.
- Cross-attention weights of one chosen sample.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import torch

from ..core.io import write_json_atomic
from ..data.spec import DatasetSpec
from ..engine.evaluate import eval_batches
from ..modeling.model import Batch, Encoded


def _forward_features(
    model: Any, tokens: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> Any:
    return model({}, Encoded(dict(tokens), dict(masks)))


def _integrated_gradients(
    model: Any,
    tokens: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    target: torch.Tensor,
    n_steps: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{m: [B] attribution}, [B] completeness error (sum of attributions - logit gap)."""
    from captum.attr import IntegratedGradients

    names = list(tokens)

    def logits_of(*args: torch.Tensor) -> torch.Tensor:
        n = len(names)
        return _forward_features(
            model, dict(zip(names, args[:n], strict=True)), dict(zip(names, args[n:], strict=True))
        ).logits.float()

    inputs = tuple(tokens[m].detach() for m in names)
    baselines = tuple(torch.zeros_like(t) for t in inputs)
    ig = IntegratedGradients(logits_of)
    attributions, delta = ig.attribute(
        inputs,
        baselines=baselines,
        target=target,
        additional_forward_args=tuple(masks[m] for m in names),
        n_steps=n_steps,
        return_convergence_delta=True,
    )
    per_modality = {
        m: (a * masks[m][..., None]).flatten(1).sum(1).detach()
        for m, a in zip(names, attributions, strict=True)
    }
    return per_modality, delta.detach().abs()


def explain(
    model: Any,
    ds: datasets.Dataset,
    spec: DatasetSpec,
    batch_size: int = 32,
    ig_steps: int = 32,
    attention_sample: int = 0,
) -> dict[str, Any]:
    """Modality contributions per sample and on average, MoE expert load per modality and
    domain (for a ``moe`` fusion) and the cross-attention maps of ``attention_sample`` (for a
    ``cross_attention`` fusion). Runs in eval mode on the model's device."""
    if not 0 <= attention_sample < len(ds):
        raise ValueError(
            f"attention_sample {attention_sample} is outside the split's {len(ds)} rows"
        )
    modalities = model.modalities
    domains = ds["domain"] if "domain" in ds.column_names else ["all"] * len(ds)
    per_sample: list[dict[str, Any]] = []
    load_by_modality: dict[str, torch.Tensor] = {}
    load_by_domain: dict[str, torch.Tensor] = defaultdict(lambda: 0)  # type: ignore[arg-type]
    attention: dict[str, Any] | None = None
    for batch in eval_batches(model, ds, spec, batch_size):
        with torch.no_grad():
            tokens, masks = model.encode(batch)
            full = _forward_features(model, tokens, masks)
            probs = model.head.task.class_probabilities(full.logits)
            pred = probs.argmax(-1)
            chosen = probs.gather(1, pred[:, None])[:, 0]
            ablation = {}
            for m in modalities:
                dropped = {**masks, m: torch.zeros_like(masks[m])}
                p = model.head.task.class_probabilities(
                    _forward_features(model, tokens, dropped).logits
                )
                ablation[m] = chosen - p.gather(1, pred[:, None])[:, 0]
        ig, delta = _integrated_gradients(model, tokens, masks, pred, ig_steps)
        rows = batch["row"].tolist()
        present = {m: masks[m].any(1) for m in modalities}
        for i, row in enumerate(rows):
            per_sample.append({
                "row": row, "domain": domains[row], "prediction": int(pred[i]),
                "label": int(batch["labels"][i]) if "labels" in batch else None,
                "present": [m for m in modalities if present[m][i]],
                "ablation": {m: float(ablation[m][i]) for m in modalities},
                "integrated_gradients": {m: float(ig[m][i]) for m in modalities},
                "ig_completeness_error": float(delta[i]),
            })  # fmt: skip
        if "sample_load" in full.info:
            _add_expert_load(full.info, present, rows, domains, load_by_modality, load_by_domain)
        if attention is None and attention_sample in rows:
            attention = _attention_of(model, batch, rows.index(attention_sample), tokens, masks)
    result: dict[str, Any] = {
        "modalities": modalities,
        "samples": len(per_sample),
        **_summaries(per_sample, modalities),
        "per_sample": per_sample,
    }
    if load_by_modality:
        result["expert_load"] = {
            "per_modality": {m: _share(v) for m, v in load_by_modality.items()},
            "per_domain": {d: _share(v) for d, v in sorted(load_by_domain.items())},
        }
    if attention is not None:
        result["attention"] = {"row": attention_sample, **attention}
    if _has_imbalance(model, ds, spec):
        from .imbalance import modality_imbalance

        result["imbalance"] = modality_imbalance(model, ds, spec, batch_size)
    return result


def _has_imbalance(model: Any, ds: datasets.Dataset, spec: DatasetSpec) -> bool:
    """Modality imbalance is measured on labelled classification splits of 2+ modalities."""
    return (
        model.head.task.exclusive_classes
        and len(model.modalities) > 1
        and spec.label in ds.column_names
    )


def _share(counts: torch.Tensor) -> list[float]:
    return (counts / counts.sum().clamp(min=1e-12)).tolist()


def _add_expert_load(
    info: Mapping[str, Any],
    present: Mapping[str, torch.Tensor],
    rows: Sequence[int],
    domains: Sequence[str],
    by_modality: dict[str, torch.Tensor],
    by_domain: dict[str, Any],
) -> None:
    sample_load = info["sample_load"].float().cpu()  # B x E
    for m, share in info["expert_load_per_modality"].items():
        weighted = share.float().cpu() * float(present[m].sum())
        by_modality[m] = by_modality.get(m, 0) + weighted
    for i, row in enumerate(rows):
        by_domain[domains[row]] = by_domain[domains[row]] + sample_load[i]


def _attention_of(
    model: Any,
    batch: Batch,
    index: int,
    tokens: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
) -> dict[str, Any] | None:
    if not hasattr(model.fusion, "record_attention"):
        return None
    model.fusion.record_attention = True
    try:
        with torch.no_grad():
            info = _forward_features(
                model,
                {m: t[index : index + 1] for m, t in tokens.items()},
                {m: k[index : index + 1] for m, k in masks.items()},
            ).info
    finally:
        model.fusion.record_attention = False
    # Keep the sample's real tokens only: padding rows and masked key columns are dropped.
    real = {m: masks[m][index].bool().cpu() for m in masks}
    keys, columns = {}, {}
    for m, layout in info["attention_keys"].items():
        keys[m] = [["null", 1], *([n, int(real[n].sum())] for n, _ in layout[1:])]
        columns[m] = torch.cat([torch.ones(1, dtype=torch.bool), *(real[n] for n, _ in layout[1:])])
    layers = [
        {m: w[0].cpu()[real[m]][:, columns[m]].tolist() for m, w in layer.items()}
        for layer in info["attention"]
    ]
    return {"keys": keys, "layers": layers}


def _summaries(
    per_sample: Sequence[Mapping[str, Any]], modalities: Sequence[str]
) -> dict[str, Any]:
    """Mean contributions, and the modalities ranked by each method (largest first)."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    ablation = {m: mean([s["ablation"][m] for s in per_sample]) for m in modalities}
    ig_mean = {m: mean([s["integrated_gradients"][m] for s in per_sample]) for m in modalities}
    shares = {m: [] for m in modalities}  # |attribution| share of each modality per sample
    for s in per_sample:
        total = sum(abs(v) for v in s["integrated_gradients"].values())
        for m in modalities:
            shares[m].append(abs(s["integrated_gradients"][m]) / total if total else 0.0)
    ig_share = {m: mean(v) for m, v in shares.items()}
    return {
        "ablation": {"mean": ablation, "ranking": sorted(modalities, key=lambda m: -ablation[m])},
        "integrated_gradients": {
            "mean": ig_mean,
            "mean_abs_share": ig_share,
            "ranking": sorted(modalities, key=lambda m: -ig_share[m]),
            "mean_completeness_error": mean([s["ig_completeness_error"] for s in per_sample]),
        },
    }


def format_explanation(result: Mapping[str, Any]) -> str:
    lines = [f"{'modality':<12} {'drop-one':>9} {'IG mean':>9} {'IG |share|':>11}", "-" * 44]
    for m in result["ablation"]["ranking"]:
        lines.append(
            f"{m:<12} {result['ablation']['mean'][m]:>+9.4f} "
            f"{result['integrated_gradients']['mean'][m]:>+9.4f} "
            f"{result['integrated_gradients']['mean_abs_share'][m]:>11.3f}"
        )
    lines.append(
        f"ranking: drop-one {result['ablation']['ranking']}, IG {result['integrated_gradients']['ranking']}"
    )
    if "imbalance" in result:
        imb = result["imbalance"]
        lines.append(
            f"modality imbalance (accuracy {imb['full']:.3f}, chance {imb['chance']:.3f}):"
        )
        lines.append(f"  {'modality':<12} {'alone':>7} {'without':>8} {'utilisation':>12}")
        for m in result["modalities"]:
            lines.append(f"  {m:<12} {imb['alone'][m]:>7.3f} {imb['full'] - imb['contribution'][m]:>8.3f} "
                         f"{imb['utilisation'][m]:>12.3f}")  # fmt: skip
        lines.append(
            f"  imbalance degree {imb['imbalance_degree']:.3f} (dominant: {imb['dominant']})"
        )
    if "expert_load" in result:
        lines.append("expert load per modality:")
        for m, v in result["expert_load"]["per_modality"].items():
            lines.append(f"  {m:<12} " + " ".join(f"{x:.2f}" for x in v))
        lines.append("expert load per domain:")
        for d, v in result["expert_load"]["per_domain"].items():
            lines.append(f"  {d:<12} " + " ".join(f"{x:.2f}" for x in v))
    return "\n".join(lines)


# What ``write_explanation`` may write into its folder.
EXPLANATION_FILES = ("explain.json", "contributions.png", "expert_load.png", "attention.png")


def write_explanation(result: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    """explain.json and PNGs: contributions, expert load (MoE) and attention (cross-attention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "explain.json", dict(result))
    paths = {"json": out / "explain.json"}
    modalities = result["modalities"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    axes[0].bar(modalities, [result["ablation"]["mean"][m] for m in modalities], color="#1f77b4")
    axes[0].set_title("drop-one: Δ p(predicted class)")
    ig = result["integrated_gradients"]["mean_abs_share"]
    axes[1].bar(modalities, [ig[m] for m in modalities], color="#ff7f0e")
    axes[1].set_title("integrated gradients: mean |share|")
    for ax in axes:
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
    paths["contributions"] = _save(fig, out / "contributions.png")

    if "expert_load" in result:
        load = result["expert_load"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        for ax, key in zip(axes, ("per_modality", "per_domain"), strict=True):
            names = list(load[key])
            matrix = np.asarray([load[key][n] for n in names])
            image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0)
            ax.set_yticks(range(len(names)), names)
            ax.set_xticks(range(matrix.shape[1]))
            ax.set_xlabel("expert")
            ax.set_title(f"expert load {key.replace('_', ' ')}")
            fig.colorbar(image, ax=ax)
        paths["expert_load"] = _save(fig, out / "expert_load.png")

    if "attention" in result:
        attention = result["attention"]
        last = attention["layers"][-1]
        fig, axes = plt.subplots(1, len(last), figsize=(4.2 * len(last), 3.6), squeeze=False)
        for ax, (m, weights) in zip(axes[0], last.items(), strict=True):
            matrix = np.asarray(weights).reshape(-1, sum(w for _, w in attention["keys"][m]))
            if matrix.size == 0:
                ax.set_title(f"{m} is absent in row {attention['row']}")
                ax.axis("off")
                continue
            image = ax.imshow(matrix, aspect="auto", cmap="magma", vmin=0)
            fig.colorbar(image, ax=ax)
            ax.set_yticks(range(matrix.shape[0]))
            edges, labels, start = [], [], 0
            for name, width in attention["keys"][m]:
                labels.append((start + (width - 1) / 2, name))
                start += width
                edges.append(start - 0.5)
            for edge in edges[:-1]:
                ax.axvline(edge, color="white", linewidth=0.8)
            ax.set_xticks([c for c, _ in labels], [n for _, n in labels], fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_ylabel(f"{m} tokens")
            ax.set_title(f"{m} attends to (row {attention['row']})")
        paths["attention"] = _save(fig, out / "attention.png")
    return paths


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
