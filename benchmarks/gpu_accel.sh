#!/usr/bin/env bash
# The accelerator checks of issue 16 (item 4), prepared for a lent GPU and NOT yet run (no GPU was
# available when they were written). Usage (on the device machine, from the repo root):
#   bash benchmarks/gpu_accel.sh
# Writes JSON lines to $OUT (or ./workdir/gpu) and prints them:
#   - float32 vs bfloat16: the floor and RISE at N = 2000 and N = 20000 (one run each, ratios);
#   - the whole Table 1 in bfloat16 for 2000 measured pairs (projected to 20,000), warm-up on 64 pairs;
#   - LIME over many pairs: SLIC serial vs overlapped vs device-only, ResNet-18/layer3 at 112 px;
#   - the pair methods (pooled_pair, rise_pair, integrated cross-Jacobian) against RISE N = 2000, same model.
set -uo pipefail
out="${OUT:-workdir/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
python3 -m benchmarks.compute_dtype --model=resnet18 --image_size=112 --num_masks=2000 --batch_size=500 \
  --rounds=5 2>"$out/dtype_n2000.err" | tee "$out/dtype_n2000.jsonl"
python3 -m benchmarks.compute_dtype --model=resnet18 --image_size=112 --num_masks=20000 --batch_size=1000 \
  --rounds=3 2>"$out/dtype_n20000.err" | tee "$out/dtype_n20000.jsonl"
python3 -m benchmarks.lime_overlap --model=resnet18 --image_size=112 --num_pairs=128 --threads=8 \
  --repeats=3 2>"$out/lime.err" | tee "$out/lime_overlap.jsonl"
python3 -m benchmarks.pair_throughput --model=resnet18 --image_size=112 --num_pairs=64 --pair_masks=250,500 \
  --cross_jacobian_steps=16 --batch_size=500 --repeats=3 2>"$out/pairs.err" | tee "$out/pairs_resnet18_112.jsonl"
python3 -m benchmarks.table1_scale --pairs=2000 --warmup_pairs=64 --compute_dtype=bfloat16 --batch_size=500 \
  --roofline_batches=16,500 2>"$out/table1.err" | tee "$out/table1_bf16_p2000.jsonl"
for f in "$out"/*.err; do tail -n 3 "$f"; done
