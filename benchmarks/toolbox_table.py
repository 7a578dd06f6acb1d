"""The transfer toolbox's table: each adaptation arm against ``head`` on the same seeds and
episodes, for adapted accuracy and for forgetting.

    python benchmarks/toolbox_table.py [benchmarks/results/real-digits-toolbox]

Reads the folder's results.csv (written by cross_domain.py) and writes toolbox.md and
toolbox.json beside it. Each arm is averaged over the targets within a (seed, episode),
then compared with head on the same (seed, episode): the mean difference, its 95% CI, and a
two-sided t-test on the seeds' means of their episodes. The p-values are Holm-corrected over
every test in the table (two per arm and fusion, three where the rows hold the target ECE).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from multimodal.experiments.bench import read_results
from multimodal.experiments.stats import holm, paired, two_level

MEASURES = ("adapted", "forgetting", "adapted_ece")


def by_unit(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[int, list[float]]]:
    """(fusion, arm, measure) -> {seed: [per episode, the mean over targets]}."""
    cells: dict[tuple, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for m in MEASURES:
            if isinstance(
                r.get(m), float
            ):  # adapted_ece: results from before it was recorded lack it
                cells[(r["fusion"], r["adaptation"], m)][
                    (int(r["seed"]), int(r["episode"]))
                ].append(r[m])
    out: dict[tuple[str, str, str], dict[int, list[float]]] = {}
    for key, units in cells.items():
        seeds: dict[int, list[float]] = defaultdict(list)
        for (seed, _), values in sorted(units.items()):
            seeds[seed].append(sum(values) / len(values))
        out[key] = dict(seeds)
    return out


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    units = by_unit(rows)
    entries = []
    for fusion, arm, _ in sorted(k for k in units if k[2] == "adapted"):
        entry: dict[str, Any] = {"fusion": fusion, "adaptation": arm}
        for m in MEASURES:
            if (fusion, arm, m) not in units:
                continue
            entry[m] = two_level(units[(fusion, arm, m)])
            if arm != "head":
                entry[f"{m}_vs_head"] = paired(units[(fusion, arm, m)], units[(fusion, "head", m)])
        entries.append(entry)
    tests = [(e, f"{m}_vs_head") for e in entries for m in MEASURES if f"{m}_vs_head" in e]
    for (e, key), p in zip(tests, holm([e[key]["p_value"] for e, key in tests]), strict=True):
        e[key]["p_holm"] = p
    return entries


def markdown(entries: list[dict[str, Any]]) -> str:
    def cell(stat: dict[str, Any]) -> str:
        return f"{stat['mean']:.3f} ± {stat['ci']:.3f}"

    def vs(stat: dict[str, Any] | None) -> str:
        return (
            "—"
            if stat is None
            else f"{stat['mean']:+.3f} ± {stat['ci']:.3f} (p={stat['p_holm']:.2g})"
        )

    seeds = max(e["adapted"].get("seeds", 0) for e in entries)
    ece = all("adapted_ece" in e for e in entries)
    lines = ["| fusion | adaptation | adapted | adapted − head (Holm p) | forgetting | forgetting − head (Holm p) |"
             + (" target ECE | ECE − head (Holm p) |" if ece else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if ece else "")]  # fmt: skip
    for e in entries:
        line = (f"| {e['fusion']} | {e['adaptation']} | {cell(e['adapted'])} | {vs(e.get('adapted_vs_head'))} | "
                f"{cell(e['forgetting'])} | {vs(e.get('forgetting_vs_head'))} |")  # fmt: skip
        if ece:
            line += f" {cell(e['adapted_ece'])} | {vs(e.get('adapted_ece_vs_head'))} |"
        lines.append(line)
    tests = sum(f"{m}_vs_head" in e for e in entries for m in MEASURES)
    ece_note = (
        " Target ECE: the adapted model's, 15 bins, on each target's test split." if ece else ""
    )
    lines += ["", f"Means over both targets; ± 95% CI, t over {seeds} seeds' means of their episodes; differences "
                  f"paired on (seed, episode), Holm over the table's {tests} tests. Forgetting: source test "
                  "accuracy before minus after adaptation (lower forgets less)." + ece_note]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/real-digits-toolbox")
    entries = table(read_results(folder / "results.csv"))
    text = markdown(entries)
    print(text)
    (folder / "toolbox.md").write_text(text + "\n")
    (folder / "toolbox.json").write_text(json.dumps(entries, indent=2, default=float))
    print(f"wrote {folder / 'toolbox.md'}, {folder / 'toolbox.json'}")


if __name__ == "__main__":
    main()
