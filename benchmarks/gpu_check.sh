#!/usr/bin/env bash
# The prepared GPU check, for a lent device: under 9 minutes in all. Writes its JSON under
# ${OUT:-benchmarks/results} (gpu-sweep.json, gpu-e2e.json); each file is rewritten as it
# goes, so a run cut short keeps what it measured. Needs benchmarks/data/real-digits
# (make_real_digits.py, or carried to a machine without espeak-ng and flite).
#   bash benchmarks/gpu_check.sh
set -u
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
# Batch-size sweep of the realistic models, bf16, eager and compiled, profiled.
timeout 330 python benchmarks/gpu.py --batch 32,128,256 --precisions bf16 --fusions concat,cross_attention \
    --budget-s 240 --profile --out "$OUT/gpu-sweep.json"
# The real-digits transfer protocol end to end, frozen and fine-tuned.
timeout 200 python benchmarks/gpu.py --e2e --budget-s 150 --out "$OUT/gpu-e2e.json"
