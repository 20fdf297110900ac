#!/usr/bin/env bash
# Device check for LIME and the mask method on a lent GPU: bash benchmarks/gpu_methods.sh
set -uo pipefail
out="${OUT:-workdir/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -m benchmarks.methods_throughput --model=resnet18 --image_size=112 --num_pairs=32 2>"$out/methods.err" \
  | tee "$out/methods_resnet18_112.jsonl"
for f in "$out"/*.err; do tail -n 3 "$f"; done
