"""The transfer toolbox's table: each variant against a baseline on the same seeds and
episodes, for adapted accuracy, forgetting and the target ECE.

    python benchmarks/toolbox_table.py [FOLDER] [--by COLUMN] [--baseline VALUE]
        [--versus-zero-shot ARMS]

FOLDER (default benchmarks/results/real-digits-toolbox) holds the results.csv that
cross_domain.py wrote; toolbox.md and toolbox.json are written beside it. Variants are the
values of --by (default ``adaptation``, against ``head``; ``transfer.select`` against
``random`` compares the row selectors). Each variant is averaged over the targets within a
(seed, episode), then compared with the baseline on the same (seed, episode): the mean
difference, its 95% CI, and a two-sided t-test on the seeds' means of their episodes. The
arms of --versus-zero-shot (default ``tent,bn_adapt``: they use no labels) are also compared
with the source model before adaptation. The p-values are Holm-corrected over every test in
the table.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from multimodal.experiments.bench import read_results
from multimodal.experiments.stats import holm, paired, seed_values, two_level

MEASURES = ("adapted", "forgetting", "adapted_ece")
Units = dict[tuple[str, str, str], dict[int, list[float]]]


def by_unit(rows: list[dict[str, Any]], by: str) -> Units:
    """(fusion, variant, measure) -> {seed: [per episode, the mean over targets]}; the
    measures, and ``zero_shot``, the source model's accuracy on the targets."""
    cells: dict[tuple, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for m in (*MEASURES, "zero_shot"):
            if isinstance(r.get(m), float):  # adapted_ece: older results lack it
                unit = (int(r["seed"]), int(r["episode"]))
                cells[(r["fusion"], str(r[by]), m)][unit].append(r[m])
    return seed_values(cells)


def table(
    rows: list[dict[str, Any]], by: str = "adaptation", baseline: str = "head",
    versus_zero_shot: tuple[str, ...] = ("tent", "bn_adapt"),
) -> list[dict[str, Any]]:  # fmt: skip
    units = by_unit(rows, by)
    if not any(k[1] == baseline for k in units):
        raise SystemExit(f"no rows with {by} = {baseline!r} to compare against")
    entries = []
    for fusion, variant, _ in sorted(k for k in units if k[2] == "adapted"):
        entry: dict[str, Any] = {"fusion": fusion, by: variant}
        entry["zero_shot"] = two_level(units[(fusion, variant, "zero_shot")])
        for m in MEASURES:
            if (fusion, variant, m) not in units:
                continue
            entry[m] = two_level(units[(fusion, variant, m)])
            if variant != baseline:
                entry[f"{m}_vs_base"] = paired(
                    units[(fusion, variant, m)], units[(fusion, baseline, m)]
                )
        if variant in versus_zero_shot:
            entry["adapted_vs_zero_shot"] = paired(
                units[(fusion, variant, "adapted")], units[(fusion, variant, "zero_shot")]
            )
        entries.append(entry)
    tests = [(e, k) for e in entries for k in e if k.endswith(("_vs_base", "_vs_zero_shot"))]
    for (e, key), p in zip(tests, holm([e[key]["p_value"] for e, key in tests]), strict=True):
        e[key]["p_holm"] = p
    return entries


def markdown(entries: list[dict[str, Any]], by: str, baseline: str) -> str:
    def cell(stat: dict[str, Any]) -> str:
        return f"{stat['mean']:.3f} ± {stat['ci']:.3f}"

    def vs(stat: dict[str, Any] | None) -> str:
        if stat is None:
            return "—"
        return f"{stat['mean']:+.3f} ± {stat['ci']:.3f} (p={stat['p_holm']:.2g})"

    seeds = max(e["adapted"].get("seeds", 0) for e in entries)
    ece = all("adapted_ece" in e for e in entries)
    zero = any("adapted_vs_zero_shot" in e for e in entries)
    b = baseline
    head = ["fusion", by, "zero-shot", "adapted", f"adapted − {b} (Holm p)"]
    head += ["adapted − zero-shot (Holm p)"] if zero else []
    head += ["forgetting", f"forgetting − {b} (Holm p)"]
    head += ["target ECE", f"ECE − {b} (Holm p)"] if ece else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        cells = [
            e["fusion"],
            e[by],
            cell(e["zero_shot"]),
            cell(e["adapted"]),
            vs(e.get("adapted_vs_base")),
        ]
        cells += [vs(e.get("adapted_vs_zero_shot"))] if zero else []
        cells += [cell(e["forgetting"]), vs(e.get("forgetting_vs_base"))]
        cells += [cell(e["adapted_ece"]), vs(e.get("adapted_ece_vs_base"))] if ece else []
        lines.append("| " + " | ".join(cells) + " |")
    tests = sum(k.endswith(("_vs_base", "_vs_zero_shot")) for e in entries for k in e)
    ece_note = (
        " Target ECE: the adapted model's, 15 bins, on each target's test split." if ece else ""
    )
    lines += ["", f"Means over the targets; ± 95% CI, t over {seeds} seeds' means of their episodes; differences "
                  f"paired on (seed, episode), two-sided one-sample t-test on the seed means, Holm over the "
                  f"table's {tests} tests. Forgetting: source test accuracy before minus after adaptation "
                  "(lower forgets less). Zero-shot: the source model on the targets." + ece_note]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", nargs="?", default="benchmarks/results/real-digits-toolbox")
    parser.add_argument("--by", default="adaptation", help="the column whose values are compared")
    parser.add_argument("--baseline", default="head", help="the value of --by compared against")
    parser.add_argument("--versus-zero-shot", default="tent,bn_adapt",
                        help="comma-separated variants also compared with zero-shot")  # fmt: skip
    args = parser.parse_args()
    folder = Path(args.folder)
    label_free = tuple(a for a in args.versus_zero_shot.split(",") if a)
    entries = table(read_results(folder / "results.csv"), args.by, args.baseline, label_free)
    text = markdown(entries, args.by, args.baseline)
    print(text)
    (folder / "toolbox.md").write_text(text + "\n")
    (folder / "toolbox.json").write_text(json.dumps(entries, indent=2, default=float))
    print(f"wrote {folder / 'toolbox.md'}, {folder / 'toolbox.json'}")


if __name__ == "__main__":
    main()
