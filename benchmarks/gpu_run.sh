#!/usr/bin/env bash
# The one prepared device check: the saliency throughput benchmark on a lent GPU.
# Usage (on the device machine, from the repo root): bash benchmarks/gpu_run.sh
# Writes JSON lines to $OUT (or ./workdir/gpu) and prints them.
set -uo pipefail
out="${OUT:-workdir/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
python3 -m benchmarks.saliency_throughput --model=resnet18 --image_size=112 --num_masks=2000 \
  --batch_size=500 --repeats=5 2>"$out/n2000.err" | tee "$out/n2000.jsonl"
python3 -m benchmarks.saliency_throughput --model=resnet18 --image_size=112 --num_masks=20000 \
  --batch_size=1000 --repeats=3 --noreference_loop --nomemory 2>"$out/n20000.err" | tee "$out/n20000.jsonl"
for f in "$out"/*.err; do tail -n 3 "$f"; done
