"""Wall time of one transfer run against its number of k-shot episodes: each run in a fresh
process (an empty feature store), the same unit of a suite otherwise.

    python benchmarks/episodes_timing.py [--suite real-digits] [--fusion concat]
        [--grid encoders=pretrained] [--episodes 1,20] [--out benchmarks/results/episodes-timing.json]

With frozen encoders (real-digits' head adaptation and head scratch), the encoders run once
per split whatever the number of episodes, so each further episode costs only the fits of
the fusion and head on cached features and their evaluations.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SUITES = Path(__file__).parent / "suites"


def one_run(suite: str, fusion: str, grid: dict[str, str], episodes: int) -> dict:
    """Run the suite's first unit of ``fusion`` at ``grid`` with ``episodes`` in this process."""
    import datasets
    import transformers

    from multimodal.experiments.bench import load_suite, plan, unit_config
    from multimodal.experiments.transfer import transfer_adaptations

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    spec = load_suite(SUITES / f"{suite}.yaml")
    unit = next(u for u in plan(spec, [fusion], 1)
                if u.fusion == fusion and all(str(dict(u.grid).get(k)) == v for k, v in grid.items()))  # fmt: skip
    config = unit_config(spec, unit)
    config["transfer"]["episodes"] = episodes
    tick = time.perf_counter()
    reports = transfer_adaptations(config, list(spec.adaptations))
    seconds = time.perf_counter() - tick
    first = next(iter(reports.values()))
    return {"episodes": episodes, "seconds": seconds, "stage_seconds": first.stage_seconds,
            "feature_store": first.feature_store, "adaptations": list(reports),
            "adapted": {t: r.adapted for t, r in first.targets.items()}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="real-digits")
    parser.add_argument("--fusion", default="concat")
    parser.add_argument(
        "--grid", default="encoders=pretrained", help="KEY=VALUE[,KEY=VALUE]: the unit's grid point"
    )
    parser.add_argument("--episodes", default="1,20")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/episodes-timing.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process's run
    args = parser.parse_args()
    grid = dict(item.split("=", 1) for item in args.grid.split(",") if item)
    if args.one is not None:
        print(json.dumps(one_run(args.suite, args.fusion, grid, args.one)))
        return
    from multimodal.core.io import write_json_atomic
    from multimodal.core.provenance import environment

    runs = []
    for n in (int(e) for e in args.episodes.split(",")):
        command = [sys.executable, __file__, "--suite", args.suite, "--fusion", args.fusion,
                   "--grid", args.grid, "--one", str(n)]  # fmt: skip
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(
            f"{n:>3} episodes: {runs[-1]['seconds']:.1f} s, feature store {runs[-1]['feature_store']}"
        )
    ratio = runs[-1]["seconds"] / runs[0]["seconds"]
    print(f"{runs[-1]['episodes']} episodes take {ratio:.2f}x the time of {runs[0]['episodes']}")
    write_json_atomic(args.out, {"suite": args.suite, "fusion": args.fusion, "grid": grid, "runs": runs,
                                 "ratio": ratio, "environment": environment()})  # fmt: skip


if __name__ == "__main__":
    main()
