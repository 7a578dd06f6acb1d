"""Drift detection: does incoming data still look like the data a model was adapted on?

Both datasets go through the model; the comparison runs on the fused representation and on
each modality's encoder output (mean over its valid tokens), with two tests:

- a kernel two-sample test: unbiased MMD^2 with a Gaussian kernel (median-distance
  bandwidth) and a permutation p-value;
- a domain classifier: logistic regression told apart reference from incoming rows, its
  held-out AUROC (0.5: indistinguishable) from 2-fold cross-fitting.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
import torchmetrics.functional as tmf

from ..core.io import write_json_atomic
from ..data.spec import DatasetSpec
from ..engine.evaluate import eval_batches
from ..modeling.model import Encoded


@torch.no_grad()
def representations(
    model: Any, ds: datasets.Dataset, spec: DatasetSpec, batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """{"fused": [N, D], m: [N_m, D_m]} (rows where m is present) on the model's device."""
    from fusion import masked_mean

    out: dict[str, list[torch.Tensor]] = {"fused": []}
    for batch in eval_batches(model, ds, spec, batch_size):
        tokens, masks = model.encode(batch)
        result = model({}, Encoded(tokens, masks))
        out["fused"].append(result.fused.float().cpu())
        for m in model.modalities:
            present = masks[m].any(1)
            out.setdefault(m, []).append(masked_mean(tokens[m], masks[m])[present].float().cpu())
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def _subsample(x: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return x if len(x) <= n else x[torch.randperm(len(x), generator=generator)[:n]]


def mmd_test(
    x: torch.Tensor, y: torch.Tensor, permutations: int = 500, seed: int = 0
) -> dict[str, float]:
    """Unbiased MMD^2 between samples x [n, d] and y [m, d] (Gaussian kernel, bandwidth =
    median pairwise distance of the pooled sample) and its permutation p-value."""
    z = torch.cat([x, y]).double()
    n = len(x)
    d2 = torch.cdist(z, z).pow(2)
    off_diagonal = d2[~torch.eye(len(z), dtype=torch.bool)]
    bandwidth = off_diagonal.median().clamp(min=1e-12)
    k = torch.exp(-d2 / bandwidth)
    k.fill_diagonal_(0.0)

    def statistic(labels: torch.Tensor) -> torch.Tensor:  # labels: [P, n+m] bool, True = x
        a, b = labels.double(), (~labels).double()
        na, nb = a.sum(1), b.sum(1)
        kxx = torch.einsum("pi,ij,pj->p", a, k, a) / (na * (na - 1))
        kyy = torch.einsum("pi,ij,pj->p", b, k, b) / (nb * (nb - 1))
        kxy = torch.einsum("pi,ij,pj->p", a, k, b) / (na * nb)
        return kxx + kyy - 2 * kxy

    observed = torch.zeros(len(z), dtype=torch.bool)
    observed[:n] = True
    value = statistic(observed[None])[0]
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.stack(
        [observed[torch.randperm(len(z), generator=generator)] for _ in range(permutations)]
    )
    null = statistic(shuffled)
    p_value = (1 + (null >= value).sum().item()) / (1 + permutations)
    return {"mmd2": float(value), "p_value": float(p_value), "bandwidth": float(bandwidth)}


def _logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        loss = loss + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), b.detach()


def classifier_auroc(x: torch.Tensor, y: torch.Tensor, seed: int = 0, steps: int = 200) -> float:
    """Held-out AUROC of an L2-regularised logistic regression separating x from y (2 folds)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.cat([x, y]).float()
    labels = torch.cat([torch.zeros(len(x)), torch.ones(len(y))])
    order = torch.randperm(len(z), generator=generator)
    folds = [order[: len(z) // 2], order[len(z) // 2 :]]
    scores = torch.zeros(len(z))
    for train, test in ((folds[0], folds[1]), (folds[1], folds[0])):
        mean, std = z[train].mean(0), z[train].std(0).clamp(min=1e-6)
        features = (z - mean) / std
        w, b = _logistic_regression(features[train], labels[train], steps)
        with torch.no_grad():
            scores[test] = features[test] @ w + b
    return float(tmf.auroc(scores, labels.long(), task="binary"))


def detect_drift(
    model: Any,
    reference: datasets.Dataset,
    incoming: datasets.Dataset,
    spec: DatasetSpec,
    incoming_spec: DatasetSpec | None = None,
    alpha: float = 0.01,
    max_samples: int = 400,
    permutations: int = 500,
    seed: int = 0,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Per representation (``fused`` and each modality): MMD^2, its p-value, the domain
    classifier's AUROC and ``drift`` (p < alpha); ``drifted_modalities`` lists the modalities
    that drifted, strongest first; ``overall`` is the fused representation's verdict."""
    ref = representations(model, reference, spec, batch_size)
    inc = representations(model, incoming, incoming_spec or spec, batch_size)
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, dict[str, Any]] = {}
    for name in ["fused", *model.modalities]:
        x, y = (
            _subsample(ref[name], max_samples, generator),
            _subsample(inc[name], max_samples, generator),
        )
        if len(x) < 5 or len(y) < 5:
            rows[name] = {
                "samples": [len(x), len(y)],
                "drift": None,
                "note": "fewer than 5 rows with this modality",
            }
            continue
        test = mmd_test(x, y, permutations, seed)
        rows[name] = {
            **test, "auroc": classifier_auroc(x, y, seed), "samples": [len(x), len(y)],
            "drift": test["p_value"] < alpha,
        }  # fmt: skip
    drifted = sorted(
        (m for m in model.modalities if rows[m].get("drift")),
        key=lambda m: -rows[m]["mmd2"] / max(rows[m]["bandwidth"], 1e-12),
    )
    return {
        "alpha": alpha,
        "overall": rows["fused"],
        "representations": rows,
        "drifted_modalities": drifted,
    }


def drift_markdown(report: Mapping[str, Any]) -> str:
    lines = [
        "| representation | rows (ref, incoming) | MMD² | p-value | domain AUROC | drift |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in report["representations"].items():
        if r.get("drift") is None:
            lines.append(f"| {name} | {r['samples']} | — | — | — | {r.get('note', '')} |")
            continue
        lines.append(
            f"| {name} | {r['samples'][0]}, {r['samples'][1]} | {r['mmd2']:.4f} | {r['p_value']:.4f} | "
            f"{r['auroc']:.3f} | {'**yes**' if r['drift'] else 'no'} |"
        )
    verdict = "drift detected" if report["overall"].get("drift") else "no drift detected"
    named = ", ".join(report["drifted_modalities"]) or "none"
    return f"{verdict} (alpha {report['alpha']}); drifted modalities: {named}\n\n" + "\n".join(
        lines
    )


# What ``write_drift_report`` writes into its folder.
DRIFT_FILES = ("drift.json", "drift.md")


def write_drift_report(report: Mapping[str, Any], out: str | Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "drift.json", dict(report))
    (out / "drift.md").write_text("# Drift report\n\n" + drift_markdown(report) + "\n")
    return {"json": out / "drift.json", "md": out / "drift.md"}
