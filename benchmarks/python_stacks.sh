#!/usr/bin/env bash
# The same workload (benchmarks/python_stacks.py) under several venvs, back to back, then a table.
# Usage: bash benchmarks/python_stacks.sh VENV [VENV...] [-- extra flags for python_stacks.py]
#   e.g. bash benchmarks/python_stacks.sh /path/to/py311-venv .venv
# Each venv needs the project's dependencies installed; the code run is this checkout's.
# ROUNDS (default 2) passes over the venvs, interleaved (A B A B) so that a burst of load from other
# work on the machine does not land on one stack only; the table keeps each stack's best.
# Raw JSON lines go to $RESULTS (default workdir/python_stacks.jsonl); the table to stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
venvs=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do venvs+=("$1"); shift; done
[ $# -gt 0 ] && shift
if [ ${#venvs[@]} -eq 0 ]; then
  echo "usage: $0 VENV [VENV...] [-- flags]" >&2
  exit 2
fi
results="${RESULTS:-workdir/python_stacks.jsonl}"
mkdir -p "$(dirname "$results")"
: > "$results"
export PYTHONPATH=. TF_CPP_MIN_LOG_LEVEL=2
for venv in "${venvs[@]}"; do
  if [ ! -x "$venv/bin/python" ]; then
    echo "$venv/bin/python does not exist: not a venv" >&2
    exit 2
  fi
done
for round in $(seq "${ROUNDS:-2}"); do
  for venv in "${venvs[@]}"; do
    echo "== round $round: $venv" >&2
    "$venv/bin/python" -m benchmarks.python_stacks "$@" | tee -a "$results"
  done
done
"${venvs[0]}/bin/python" -m benchmarks.python_stacks --summarize="$results"
