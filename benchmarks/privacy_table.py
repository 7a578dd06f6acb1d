"""What a privacy budget costs: each fusion's source, zero-shot and adapted accuracy at each
``train.dp.epsilon`` against the non-private run (epsilon inf) on the same seeds and episodes.

    python benchmarks/privacy_table.py benchmarks/results/real-digits-dp

Values are means over the targets within a (seed, episode); ± is the 95% CI, t over the
seeds' means of their episodes; differences are paired on (seed, episode), tested by a
two-sided one-sample t-test on the seed means, Holm over the table. privacy.md and
privacy.json are written beside results.csv.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from multimodal.experiments.bench import read_results
from multimodal.experiments.stats import holm, paired, seed_values, two_level

AXIS = "train.dp.epsilon"
MEASURES = ("source", "zero_shot", "adapted")


def units(rows: list[dict[str, Any]]) -> dict[tuple[str, float, str], dict[int, list[float]]]:
    """(fusion, epsilon, measure) -> {seed: [per episode, the mean over targets]}."""
    cells: dict[tuple, dict[tuple[int, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for m in MEASURES:
            cells[(r["fusion"], float(r[AXIS]), m)][(int(r["seed"]), int(r["episode"]))].append(
                float(r[m])
            )
    return seed_values(cells)


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    data = units(rows)
    spent: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        if r.get("dp_epsilon") not in (None, ""):
            spent[(r["fusion"], float(r[AXIS]))].append(float(r["dp_epsilon"]))
    entries = []
    for fusion, eps in sorted({(k[0], k[1]) for k in data}):
        entry: dict[str, Any] = {"fusion": fusion, "epsilon": eps}
        got = spent.get((fusion, eps))
        entry["spent"] = max(got) if got else None
        for m in MEASURES:
            entry[m] = two_level(data[(fusion, eps, m)])
            if math.isfinite(eps) and (fusion, math.inf, m) in data:
                entry[f"{m}_vs_inf"] = paired(data[(fusion, eps, m)], data[(fusion, math.inf, m)])
        entries.append(entry)
    tests = [(e, k) for e in entries for k in e if k.endswith("_vs_inf")]
    for (e, key), p in zip(tests, holm([e[key]["p_value"] for e, key in tests]), strict=True):
        e[key]["p_holm"] = p
    return entries


def markdown(entries: list[dict[str, Any]]) -> str:
    def cell(s: dict[str, Any]) -> str:
        return f"{s['mean']:.3f} ± {s['ci']:.3f}"

    def vs(s: dict[str, Any] | None) -> str:
        return "—" if s is None else f"{s['mean']:+.3f} ± {s['ci']:.3f} (p={s['p_holm']:.2g})"

    seeds = max(e["adapted"]["seeds"] for e in entries)
    tests = sum(k.endswith("_vs_inf") for e in entries for k in e)
    lines = ["| fusion | ε | ε spent | source | source − ∞ | zero-shot | zero-shot − ∞ | adapted | adapted − ∞ |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for e in entries:
        spent = f"{e['spent']:.2f}" if e["spent"] is not None else "—"
        lines.append(f"| {e['fusion']} | {e['epsilon']:g} | {spent} | " + " | ".join(
            f"{cell(e[m])} | {vs(e.get(f'{m}_vs_inf'))}" for m in MEASURES) + " |")  # fmt: skip
    lines += ["", f"Source: the private source model on the source test split; zero-shot: it on the targets; "
                  f"adapted: its head fine-tuned (not privately) on each episode's k-shot target rows. Means over the "
                  f"targets; ± 95% CI, t over {seeds} seeds' means of their episodes; differences from ε = ∞ (no "
                  f"privacy) paired on (seed, episode), two-sided one-sample t-test on the seed means, Holm over the "
                  f"table's {tests} tests."]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default="benchmarks/results/real-digits-dp")
    folder = Path(parser.parse_args().folder)
    entries = table(read_results(folder / "results.csv"))
    text = markdown(entries)
    print(text)
    (folder / "privacy.md").write_text(text + "\n")
    (folder / "privacy.json").write_text(json.dumps(entries, indent=2, default=float))


if __name__ == "__main__":
    main()
