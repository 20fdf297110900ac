#!/usr/bin/env bash
# Runs every benchmark once at a tiny size: the test suite does not run them, so this is how a
# change to the library's API is checked against them. It measures nothing (the sizes are far too
# small for timings) and prints one line per benchmark, with the log's tail when one fails.
#
#   bash benchmarks/smoke.sh                      # with .venv/bin/python, about 5 minutes on 2 cores
#   bash benchmarks/smoke.sh path/to/python
#
# bfloat16_agreement and saliency_convergence explain a trained shapes model: the runlocal one is
# trained first (about a minute), unless SIMILARITY_WORKDIR (an experiments.train_similarity workdir)
# and DATA_DIR (its TFDS folder) name one.
set -u
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

run() {
  local name=$1
  shift
  if timeout 600 "$py" -m "benchmarks.$name" "$@" >"$tmp/$name.log" 2>&1; then
    echo "ok      $name"
  else
    failed=1
    echo "FAILED  $name"
    tail -n 20 "$tmp/$name.log" | sed 's/^/        /'
  fi
}

tiny=(--model=small_cnn --image_size=32)
run python_stacks "${tiny[@]}" --num_masks=16 --batch_size=8 --repeats=1
run saliency_throughput "${tiny[@]}" --num_masks=16 --batch_size=8 --repeats=1 --num_references=2 \
  --num_reference_masks=2 --reference_runs=1
run pair_throughput "${tiny[@]}" --num_pairs=2 --pair_masks=8 --rise_masks=8 --batch_size=8 \
  --cross_jacobian_steps=2 --grid_size=2 --repeats=1
run methods_throughput "${tiny[@]}" --lime_samples=8 --mask_steps=2 --num_pairs=2 --batch_size=8 --repeats=1
run scaling "${tiny[@]}" --num_masks=16 --num_pairs=4 --devices=1,2
run loader_throughput --num_records=64 --batches=2 --batch_size=8 --repeats=1 --small_records=8
run compute_dtype "${tiny[@]}" --num_masks=16 --batch_size=8 --rounds=1
run lime_overlap "${tiny[@]}" --num_pairs=2 --num_samples=8 --batch_size=8 --threads=1
run lime_programs "${tiny[@]}" --num_pairs=2 --num_samples=8 --batch_size=8 --repeats=1
run table1_scale "${tiny[@]}" --data=random --pairs=2 --num_masks=16 --num_reference_masks=2 --lime_samples=8 \
  --mask_steps=2 --ig_steps=2 --insertion_steps=5 --batch_size=8 --warmup_pairs=1 --projected_pairs=10

if [ -z "${SIMILARITY_WORKDIR:-}" ]; then
  DATA_DIR=$tmp/tfds
  SIMILARITY_WORKDIR=$tmp/similarity
  if ! "$py" -m experiments.train_similarity --config=experiments/configs/similarity_shapes.py:runlocal \
      --config.data_dir="$DATA_DIR" --workdir="$SIMILARITY_WORKDIR" >"$tmp/train.log" 2>&1; then
    echo "FAILED  training the runlocal shapes model for the last two"
    tail -n 20 "$tmp/train.log" | sed 's/^/        /'
    exit 1
  fi
fi
trained=(--similarity_workdir="$SIMILARITY_WORKDIR" --data_dir="${DATA_DIR:?DATA_DIR must name the TFDS folder of the SIMILARITY_WORKDIR model}")
run bfloat16_agreement "${trained[@]}" --num_pairs=2 --insertion_steps=5
run saliency_convergence "${trained[@]}" --models=shapes --pairs=2 --num_masks=16 --reference_masks=64 \
  --batch_size=8 --insertion_steps=5 --timing_pairs=0 --target_masks=16 --tolerances=
exit $failed
