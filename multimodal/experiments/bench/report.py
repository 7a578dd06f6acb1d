"""The benchmark's tables (Markdown) and files: results.csv, summary.json, summary.md, the
plots, and the missing-modality tables."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...core.io import write_json_atomic
from .plots import DP_AXIS, plot_privacy, plot_summary, plot_utilisation
from .stats import ROBUSTNESS_KEYS, comparisons, entry_grid_keys, overall_entries
from .store import write_csv


def _fmt(stat: Mapping[str, float]) -> str:
    if math.isnan(stat["mean"]):
        return "n/a"
    return (
        f"{stat['mean']:.3f} ± n/a"
        if math.isnan(stat["ci"])
        else f"{stat['mean']:.3f} ± {stat['ci']:.3f}"
    )


def summary_table(summary: Sequence[Mapping[str, Any]], baseline: str = "concat") -> str:
    """A Markdown table: one line per grid point x k x fusion x adaptation x target, with n
    (test rows per target), episodes per seed and seeds; the transfer gain, the gain over
    the best unimodal baseline (marked ✗ where the fusion does not beat it), over
    ``baseline`` and over the ``head`` adaptation, each with its Holm-corrected p and
    minimum detectable difference; and a note on how the CIs and tests are computed."""
    grid_keys = entry_grid_keys(summary[0]) if summary else []
    versus_head = any("adapted_vs_head" in e for e in summary)
    versus_teacher = any("adapted_vs_teacher" in e for e in summary)
    known = {f"adapted_vs_{baseline}", "adapted_vs_head", "adapted_vs_teacher"}
    axes = sorted({k for e in summary for k in e if k.startswith("adapted_vs_")} - known)
    oracle = any("oracle" in e for e in summary)  # leave_one_out: selection on the target
    head = [*grid_keys, "k", "fusion", "adaptation", "target", "n", "episodes", "seeds", "source", "zero-shot",
            "adapted", "scratch", "adapted − scratch", "forgetting", "best unimodal", "fusion − unimodal",
            f"adapted − {baseline}", *(["adapted − head"] if versus_head else []),
            *(["zero-shot − teacher", "adapted − teacher"] if versus_teacher else []),
            *(f"adapted − {k[len('adapted_vs_'):]}" for k in axes), *(["oracle"] if oracle else [])]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in summary:
        cells = [*[str(e[k]) for k in grid_keys], str(e["k_shot"]), e["fusion"], e["adaptation"], e["target"],
                 str(e.get("n", "")), str(e.get("episodes", 1)), str(len(e["seeds"])),
                 *[_fmt(e[m]) for m in ("source", "zero_shot", "adapted", "scratch")],
                 _compare_cell(e["transfer_gain"]), _fmt(e["forgetting"]), *_unimodal_cells(e),
                 _compare_cell(e.get(f"adapted_vs_{baseline}")),
                 *([_compare_cell(e.get("adapted_vs_head"))] if versus_head else []),
                 *([_compare_cell(e.get(f"{m}_vs_teacher")) for m in ("zero_shot", "adapted")]
                   if versus_teacher else []), *(_compare_cell(e.get(k)) for k in axes),
                 *([_fmt(e["oracle"]) if "oracle" in e else "—"] if oracle else [])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + table_note(summary)


def table_note(summary: Sequence[Mapping[str, Any]]) -> str:
    """How the table's CIs and tests were computed."""
    over = sorted({e["adapted"].get("ci_over", "seeds") for e in summary})
    tests = next((c.get("tests", 0) for e in summary for _, c in comparisons(e)), 0)
    return (
        "n: test rows per target (summed for all); episodes: k-shot draws per seed, the same rows "
        "for every fusion and adaptation; seeds: source models. ± is a 95% CI over "
        + " and over ".join(over)
        + ": with 3 seeds or more, the t-interval over the seeds' means "
        "of their episodes (seeds random, episodes nested in them, so both levels count); with "
        "fewer, over every (seed, episode), or an accuracy's binomial interval over its test rows. "
        "Differences are paired on common (seed, episode) and tested by a one-sample t-test on the "
        f"same units; p is Holm-corrected across the table's {tests} tests; MDD is the smallest true "
        f"difference found with 80% power at Bonferroni's level 0.05/{tests}, which bounds Holm's."
    )


def imbalance_table(summary: Sequence[Mapping[str, Any]]) -> str:
    """Markdown, for rows with imbalance columns: one line per grid point x k x fusion x
    adaptation (mean over targets) with accuracy, transfer gain, the source model's imbalance
    degree on the source and target test splits, the source accuracy it loses without its
    dominant modality, and the source training time. Empty without such rows."""
    entries = [e for e in overall_entries(summary) if "imbalance_degree" in e]
    if not entries:
        return ""
    grid_keys = entry_grid_keys(entries[0])
    head = [*grid_keys, "k", "fusion", "adaptation", "source", "zero-shot", "adapted", "gain",
            "imbalance (source)", "imbalance (target)", "loss without dominant", "train s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [*[str(e[k]) for k in grid_keys], str(e["k_shot"]), e["fusion"], e["adaptation"],
                 *[_fmt(e[m]) for m in ("source", "zero_shot", "adapted", "transfer_gain",
                                        "imbalance_degree", "target_imbalance_degree",
                                        "dominant_loss", "train_s")]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\n\nImbalance degree: max minus min over modalities of the utilisation (accuracy with that"
        " modality alone, above chance, as a share of the full model's); loss without dominant:"
        " source test accuracy lost when the modality that is best alone is missing. ± is a 95% CI"
        " over seeds."
    )
    return "\n".join(lines) + note


def _unimodal_cells(e: Mapping[str, Any]) -> list[str]:
    best, gain = e.get("best_unimodal"), e.get("gain_vs_unimodal")
    if not best or not gain:
        return ["—", "—"]
    mark = "" if gain["mean"] > 0 else "✗ "
    return [f"{best['modality']} {_fmt(best)}", mark + _compare_cell(gain)]


def _compare_cell(cmp: Mapping[str, float] | None) -> str:
    """``mean ± ci (p=…, MDD …)``, p Holm-corrected where the table has been corrected."""
    if not cmp:
        return "—"
    p = cmp.get("p_holm", cmp.get("p_value", math.nan))
    if math.isnan(p):
        return _fmt(cmp)
    shown = "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.01 else f"p={p:.2f}"
    mdd = cmp.get("mdd", math.nan)
    return f"{_fmt(cmp)} ({shown}" + ("" if math.isnan(mdd) else f", MDD {mdd:.3f}") + ")"


def write_results(
    rows: Sequence[Mapping[str, Any]],
    summary: Sequence[Mapping[str, Any]],
    out: str | Path,
    header: str = "",
    record: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """results.csv, summary.json, summary.md and the PNG plots in ``out``. ``record`` (the
    command, the suite, the environment) goes into summary.json beside the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows, sort=True)
    write_json_atomic(out / "summary.json", {**(record or {}), "summary": list(summary)})
    imbalance = imbalance_table(summary)
    (out / "summary.md").write_text(
        (header + "\n\n" if header else "") + summary_table(summary) + "\n"
        + (f"\n## Modality imbalance\n\n{imbalance}\n" if imbalance else "")
    )  # fmt: skip
    paths = {"csv": out / "results.csv", "json": out / "summary.json", "md": out / "summary.md"}
    paths.update(plot_summary(summary, out))
    if imbalance:
        paths["utilisation"] = plot_utilisation(summary, out / "utilisation.png")
    if any(e.get(DP_AXIS) is not None for e in summary):
        paths["privacy"] = plot_privacy(summary, out / "privacy.png")
    return paths


def robustness_table(summary: Sequence[Mapping[str, Any]], model: str = "source") -> str:
    """Markdown: one line per grid point x fusion x dropped modality for ``model``."""
    entries = [e for e in summary if e["model"] == model]
    if not entries:
        return ""
    grid_keys = [k for k in entries[0] if k not in ROBUSTNESS_KEYS | {"seeds"}]
    metric = entries[0]["metric"]
    head = [*grid_keys, "fusion", "domain", "dropped", metric, "loss", "relative"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [*[str(e[k]) for k in grid_keys], e["fusion"], e["domain"], e["dropped"],
                 _fmt(e["value"]), _fmt(e["loss"]), _fmt(e["relative"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_robustness(
    rows: Sequence[Mapping[str, Any]], summary: Sequence[Mapping[str, Any]], out: str | Path
) -> dict[str, Path]:
    """robustness.csv (per seed), robustness.json (summary) and robustness.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "robustness.csv", rows)
    write_json_atomic(out / "robustness.json", list(summary))
    models = list(dict.fromkeys(e["model"] for e in summary))
    text = "\n\n".join(f"## {m}\n\n{robustness_table(summary, m)}" for m in models)
    (out / "robustness.md").write_text(f"# Missing modalities at test time\n\n{text}\n")
    return {"robustness_csv": out / "robustness.csv", "robustness_json": out / "robustness.json",
            "robustness_md": out / "robustness.md"}  # fmt: skip
