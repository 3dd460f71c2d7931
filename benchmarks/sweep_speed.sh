#!/usr/bin/env bash
# docs/RESULTS.md, "Whole-network compression: CPU speed": the uncompressed gray model against every merged
# model a sweep made at one budget, PyTorch eager, batch-1 latency and batch-256 throughput, round-robin in
# one `achroma bench` run (speedups are against the uncompressed model, measured in the same run).
#
#   benchmarks/sweep_speed.sh SWEEP_DIR [BUDGET_PREFIX] [THREADS]     (default macs-0.5, 1 thread)
#
# SWEEP_DIR is the --out of `achroma sweep`; its models/ holds uncompressed.safetensors and
# <by>-<target>-<method>.safetensors. Run it when the machine is otherwise idle.
set -euo pipefail
dir=${1:?usage: sweep_speed.sh SWEEP_DIR [BUDGET_PREFIX] [THREADS]}
prefix=${2:-macs-0.5}
threads=${3:-1}
args=(--weights "$dir/models/uncompressed.safetensors" --name uncompressed)
for m in "$dir"/models/"$prefix"-*.safetensors; do
  name=$(basename "$m" .safetensors)
  args+=(--weights "$m" --name "${name#"$prefix"-}")
done
achroma bench "${args[@]}" --engines torch --threads "$threads" --batch 256 --runs 50 --throughput-runs 5 \
  --out "$dir/bench-$prefix" --force
