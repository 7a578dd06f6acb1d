"""Federated transfer: pooled, local-only, FedAvg, FedProx, FedBN and FedAvg under two
privacy budgets, each over seeds, on every client's test split and the held-out domain.

    python benchmarks/federated.py --config benchmarks/configs/real-digits-federated.yaml \
        --out benchmarks/results/real-digits-federated --seeds 3

Each (arm, seed) is stored as runs/<arm>-<seed>.json and skipped when it exists. The table
(federated.md, federated.csv, summary.json, federated.png): means ± 95% CI over seeds (the
held-out adapted value of a seed is the mean of its episodes), and each arm minus FedAvg
paired on seed (two-sided one-sample t-test on the seed differences), Holm over the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

ARMS = {
    "pooled": {"strategy": "pooled"}, "local": {"strategy": "local"}, "fedavg": {"strategy": "fedavg"},
    "fedprox": {"strategy": "fedprox"}, "fedbn": {"strategy": "fedbn"},
    "fedavg-dp8": {"strategy": "fedavg", "epsilon": 8.0}, "fedavg-dp1": {"strategy": "fedavg", "epsilon": 1.0},
}  # fmt: skip
COLUMNS = ("clients", "held_out_zero_shot", "held_out_adapted")


def arm_config(base: dict[str, Any], arm: str, seed: int) -> dict[str, Any]:
    config = copy.deepcopy(base)
    config["seed"] = seed
    config["train"] = {**config.get("train", {}), "seed": seed}
    config["federate"] = {**config.get("federate", {}), "strategy": ARMS[arm]["strategy"]}
    if "epsilon" in ARMS[arm]:
        config["train"]["dp"] = {"epsilon": ARMS[arm]["epsilon"], "delta": 1e-5}
    return config


def values(result: dict[str, Any]) -> dict[str, Any]:
    """A run's columns: the clients' mean test metric, the held-out zero-shot metric and
    the held-out adapted metric per episode (local: averaged over the client models)."""
    held = result["held_out"]
    models = held.get("per_client") or [held]
    episodes = [
        sum(m["episodes"][e]["adapted"] for m in models) / len(models)
        for e in range(len(models[0]["episodes"]))
    ]
    eps = [c["dp_epsilon"] for c in result["clients"] if "dp_epsilon" in c]
    per_client = {f"client {'+'.join(c['domains'])}": [c["test"]] for c in result["clients"]}
    return {**per_client, "clients": [sum(c["test"] for c in result["clients"]) / len(result["clients"])],
            "held_out_zero_shot": [sum(m["zero_shot"] for m in models) / len(models)],
            "held_out_adapted": episodes, "epsilon": max(eps) if eps else None}  # fmt: skip


def summarise(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    from multimodal.experiments.stats import holm, paired, two_level

    table: dict[str, Any] = {}
    for arm, by_seed in runs.items():
        cols = {s: values(r) for s, r in by_seed.items()}
        table[arm] = {c: two_level({s: v[c] for s, v in cols.items()}) for c in COLUMNS}
        for c in sorted(k for k in next(iter(cols.values())) if k.startswith("client ")):
            table[arm][c] = two_level({s: v[c] for s, v in cols.items()})
        eps = [v["epsilon"] for v in cols.values() if v["epsilon"] is not None]
        table[arm]["epsilon"] = sum(eps) / len(eps) if eps else None
        table[arm]["seconds"] = sum(r["seconds"] for r in by_seed.values()) / len(by_seed)
    tests = []
    base = {s: values(r) for s, r in runs.get("fedavg", {}).items()}
    for arm, by_seed in runs.items():
        if arm == "fedavg" or not base:
            continue
        cols = {s: values(r) for s, r in by_seed.items()}
        for c in COLUMNS:
            diff = paired({s: v[c] for s, v in cols.items()}, {s: v[c] for s, v in base.items()})
            table[arm][f"{c}_vs_fedavg"] = diff
            tests.append((arm, c))
    corrected = holm([table[a][f"{c}_vs_fedavg"]["p_value"] for a, c in tests])
    for (arm, c), p in zip(tests, corrected, strict=True):
        table[arm][f"{c}_vs_fedavg"]["p_holm"] = p
    return table


def markdown(table: dict[str, Any], seeds: int) -> str:
    def cell(s: dict[str, Any]) -> str:
        return f"{s['mean']:.3f} ± {s['ci']:.3f}"

    def diff(s: dict[str, Any] | None) -> str:
        if s is None:
            return "—"
        p = s.get("p_holm", math.nan)
        return f"{s['mean']:+.3f} ± {s['ci']:.3f} (Holm p {p:.3f})"

    clients = sorted(k for k in next(iter(table.values())) if k.startswith("client "))
    per_client = ["| arm | " + " | ".join(clients) + " |", "|---" * (1 + len(clients)) + "|"]
    per_client += [
        f"| {arm} | " + " | ".join(cell(row[c]) for c in clients) + " |"
        for arm, row in table.items()
    ]
    lines = [f"Means ± 95% CI over {seeds} seeds; differences from FedAvg paired on seed (two-sided "
             "one-sample t-test on the seed differences), Holm over the table's tests.", "",
             "| arm | ε spent | clients' test | held-out zero-shot | held-out adapted | "
             "Δ clients vs FedAvg | Δ held-out zero-shot | Δ held-out adapted | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for arm, row in table.items():
        eps = f"{row['epsilon']:.2f}" if row["epsilon"] is not None else "∞"
        lines.append(f"| {arm} | {eps} | " + " | ".join(cell(row[c]) for c in COLUMNS) + " | "
                     + " | ".join(diff(row.get(f"{c}_vs_fedavg")) for c in COLUMNS) + f" | {row['seconds']:.0f} |")  # fmt: skip
    lines += [
        "",
        "Each client's test split (the global model; under FedBN with the client's own "
        "normalisation layers; local: each client's own model):",
        "",
        *per_client,
    ]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(table)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.27
    for i, c in enumerate(COLUMNS):
        means = [table[a][c]["mean"] for a in arms]
        cis = [table[a][c]["ci"] for a in arms]
        ax.bar(
            [x + (i - 1) * width for x in range(len(arms))],
            means,
            width,
            yerr=cis,
            label=c,
            capsize=2,
        )
    ax.set_xticks(range(len(arms)), arms, rotation=20)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    args = parser.parse_args(argv)
    from multimodal.experiments.bench.plan import CHECKOUT, load_suite, prepare_data
    from multimodal.experiments.federated import federate, public

    base = yaml.safe_load(Path(args.config).read_text())
    if "real-digits" in base["data"]["path"]:  # built by the suite's builder where missing
        prepare_data(load_suite(CHECKOUT / "benchmarks" / "suites" / "real-digits.yaml"))
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in args.arms:
        for seed in range(args.seeds):
            path = out / "runs" / f"{arm}-{seed}.json"
            if not path.exists():
                path.write_text(json.dumps(public(federate(arm_config(base, arm, seed))), indent=1))
            runs.setdefault(arm, {})[seed] = json.loads(path.read_text())
    table = summarise(runs)
    (out / "summary.json").write_text(json.dumps(table, indent=1))
    (out / "federated.md").write_text(markdown(table, args.seeds))
    plot(table, out / "federated.png")
    print((out / "federated.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
