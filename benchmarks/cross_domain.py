"""Compare fusion modules on a cross-domain suite: transfer runs over fusions, adaptations
and seeds, written as results.csv, summary.md/json (mean ± 95% CI) and PNG plots.

    python benchmarks/cross_domain.py [--suite NAME|PATH] [--fusion concat,cross_attention,moe|all]
        [--adaptation head,full] [--uda dann,coral] [--seeds N] [--episodes N] [--out DIR]
        [--robustness] [--modality-dropout 0,0.3] [--no-unimodal] [--compare-to DIR]
        [--workers N] [--ray-address auto|ray://HOST:PORT] [--cpus-per-run C] [--gpus-per-run G]
        [--trackers tensorboard,mlflow]

With no arguments: the synthetic-quick suite and its default fusions, written to
runs/benchmarks/synthetic-quick. Runs already in --out are skipped, so an interrupted
benchmark resumes and a finished one only rewrites the summary. Each modality alone
(``image-only``, ...) runs beside the fusions under the same protocol, unless --no-unimodal.

--compare-to DIR reruns the reference in DIR (its suite, fusions, adaptations, seeds and
episodes, as its summary.json recorded them) into --out, or reads that rerun if --out holds
it, and pairs each row's adapted metric with the reference's (results.csv) on common seeds
and episodes; it exits with status 1 when a row's mean paired difference exceeds
--tolerance.

--workers N runs N units at a time as Ray tasks on a local Ray instance (nothing to start
first); --ray-address runs them on an existing Ray cluster instead, whose nodes have this
package installed. A unit computes the same numbers wherever it runs, given the same torch
thread count (--threads-per-run; by default this process's); a unit whose worker dies is
run again (--max-retries). Without either flag units run one after another here
and Ray is not imported. --trackers logs one tracker run per unit (MLflow reads
MLFLOW_TRACKING_URI; TensorBoard writes to OUT/logs).

--robustness also evaluates every source and adapted model with each modality missing at
test time (robustness.csv/json/md); --modality-dropout crosses the runs with training-time
modality dropout rates, so the tables compare models trained with and without it.

The same as ``multimodal bench`` (``multimodal/cli/bench.py``), which this script runs.
"""

from __future__ import annotations

import sys

from multimodal.cli import main

SCRIPT = "python benchmarks/cross_domain.py"

if __name__ == "__main__":
    sys.exit(main(["bench", "--invoked-as", SCRIPT, *sys.argv[1:]]))
