"""The benchmark's figures: grouped bars and a heatmap of the summary, and the per-modality
utilisation of the source models."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .stats import entry_grid_keys, overall_entries


def plot_utilisation(summary: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Per-modality utilisation of the source models, one panel per fusion, one bar group
    per modality and one bar per grid point (balancing methods, say); first adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in overall_entries(summary) if "utilisation" in e]
    entries = [e for e in entries if e["adaptation"] == entries[0]["adaptation"]]
    grid_keys = entry_grid_keys(entries[0])
    fusions = list(dict.fromkeys(e["fusion"] for e in entries))
    modalities = sorted(entries[0]["utilisation"])
    fig, axes = plt.subplots(
        1, len(fusions), figsize=(4.5 * len(fusions), 3.8), squeeze=False, sharey=True
    )
    for ax, fusion in zip(axes[0], fusions, strict=True):
        mine = [e for e in entries if e["fusion"] == fusion]
        width = 0.8 / len(mine)
        for i, e in enumerate(mine):
            stats = [e["utilisation"][m] for m in modalities]
            label = ", ".join(f"{e[k]}" for k in grid_keys) or fusion
            ax.bar(np.arange(len(modalities)) + (i - (len(mine) - 1) / 2) * width, [s["mean"] for s in stats],
                   width, yerr=[0 if math.isnan(s["ci"]) else s["ci"] for s in stats], capsize=2, label=label)  # fmt: skip
        ax.set_xticks(range(len(modalities)), modalities)
        ax.set_title(fusion)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("utilisation (source test)")
    axes[0][-1].legend(fontsize=7, title=", ".join(grid_keys) or None, title_fontsize=7)
    fig.suptitle("accuracy with one modality alone, above chance, as a share of the full model's;"
                 " error bars: 95% CI over seeds", fontsize=8)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_summary(summary: Sequence[Mapping[str, Any]], out: Path) -> dict[str, Path]:
    """Grouped bars (zero-shot, adapted, scratch per fusion and adaptation, mean over targets)
    and a heatmap of adapted accuracy, fusion x target, per adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = overall_entries(summary)
    adaptations = sorted({e["adaptation"] for e in overall})
    varying = _varying_axes(summary)
    fusions = sorted({_row(e, varying) for e in overall})
    paths = {}
    fig, axes = plt.subplots(
        1,
        len(adaptations),
        figsize=(max(4.5, 1.3 * len(fusions)) * len(adaptations), 4),
        squeeze=False,
        sharey=True,
    )
    colors = {"zero_shot": "#9e9e9e", "adapted": "#1f77b4", "scratch": "#ff7f0e"}
    for ax, adaptation in zip(axes[0], adaptations, strict=True):
        x = np.arange(len(fusions))
        for i, m in enumerate(("zero_shot", "adapted", "scratch")):
            stats = [
                next(
                    (
                        e[m]
                        for e in overall
                        if _row(e, varying) == f and e["adaptation"] == adaptation
                    ),
                    {"mean": math.nan, "ci": math.nan},
                )
                for f in fusions
            ]
            means = [s["mean"] for s in stats]
            errs = [0 if math.isnan(s["ci"]) else s["ci"] for s in stats]
            ax.bar(
                x + (i - 1) * 0.27,
                means,
                0.27,
                yerr=errs,
                capsize=3,
                label=m.replace("_", "-"),
                color=colors[m],
            )
        ax.set_xticks(x, fusions, rotation=20, ha="right", rotation_mode="anchor")
        ax.set_title(f"adaptation: {adaptation}")
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("target accuracy")
    axes[0][-1].legend(loc="upper right", fontsize=8)
    fig.suptitle("mean over target domains; error bars: 95% CI over seeds", fontsize=9)
    fig.tight_layout()
    paths["bars"] = out / "bars.png"
    fig.savefig(paths["bars"], dpi=120)
    plt.close(fig)
    paths["heatmap"] = _plot_heatmap(summary, adaptations, fusions, varying, out / "heatmap.png")
    return paths


def _varying_axes(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The grid axes that take more than one value: a bar or heatmap row per combination."""
    keys = entry_grid_keys(summary[0]) if summary else []
    return [k for k in keys if len({str(e.get(k)) for e in summary}) > 1]


def _row(entry: Mapping[str, Any], varying: list[str]) -> str:
    """A plot row's label: the fusion and the values of the grid axes that vary."""
    return ", ".join([entry["fusion"], *(f"{k}={entry.get(k)}" for k in varying)])


def _plot_heatmap(summary: Sequence[Mapping[str, Any]], adaptations: list[str],
                  fusions: list[str], varying: list[str], path: Path) -> Path:  # fmt: skip
    """Adapted accuracy, fusion (and varying grid axes) x target, one panel per adaptation."""
    import matplotlib.pyplot as plt

    targets = sorted({e["target"] for e in summary if e["target"] != "all"})
    fig, axes = plt.subplots(
        1, len(adaptations), figsize=((1.2 * len(targets) + 1.5) * len(adaptations) + 2, 0.5 * len(fusions) + 2),
        squeeze=False, sharey=True,
    )  # fmt: skip
    for ax, adaptation in zip(axes[0], adaptations, strict=True):
        grid = np.full((len(fusions), len(targets)), np.nan)
        for e in summary:
            if e["adaptation"] == adaptation and e["target"] in targets:
                grid[fusions.index(_row(e, varying)), targets.index(e["target"])] = e["adapted"][
                    "mean"
                ]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(targets)), targets, rotation=30)
        if ax is axes[0][0]:
            ax.set_yticks(range(len(fusions)), fusions)
        else:
            ax.tick_params(labelleft=False)
        for (i, j), v in np.ndenumerate(grid):
            if not math.isnan(v):
                color = "white" if v < 0.6 else "black"
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color=color, fontsize=8)
        ax.set_title(f"adapted accuracy ({adaptation})")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


DP_AXIS = "train.dp.epsilon"


def plot_privacy(summary: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Accuracy against the privacy budget (the grid axis ``train.dp.epsilon``, log scale):
    the source test accuracy of the privately trained source model and the adapted target
    accuracy, one line per fusion and adaptation, the non-private run (ε = inf) dashed;
    error bars: 95% CI over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = [e for e in overall_entries(summary) if e.get(DP_AXIS) is not None]
    if any(e["target"] == "all" for e in overall):  # one point per budget: over all targets
        overall = [e for e in overall if e["target"] == "all"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, metric in zip(axes, ("source", "adapted"), strict=True):
        for key in sorted({(e["fusion"], e["adaptation"]) for e in overall}):
            points = sorted(
                (
                    (float(e[DP_AXIS]), e[metric])
                    for e in overall
                    if (e["fusion"], e["adaptation"]) == key
                ),
                key=lambda p: p[0],
            )
            finite = [p for p in points if math.isfinite(p[0])]
            line = ax.errorbar([p[0] for p in finite], [p[1]["mean"] for p in finite],
                               yerr=[0 if math.isnan(p[1]["ci"]) else p[1]["ci"] for p in finite],
                               marker="o", capsize=3, label=" / ".join(key))  # fmt: skip
            for _, stat in (p for p in points if not math.isfinite(p[0])):  # ε = inf: no privacy
                ax.axhline(stat["mean"], linestyle="--", color=line[0].get_color(), alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("ε (train.dp.epsilon)")
        ax.set_title(f"{metric} accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
