#!/usr/bin/env bash
# Issue 11's table: the resnet-cifar-20 and the demo model (both trained here on color CIFAR-10 (JPEG))
# transferred to PneumoniaMNIST and Fashion-MNIST four ways, at the same epochs, 1 CPU thread each.
# Resumable: a run whose report.json exists is skipped. Summarize with scripts/transfer_table.py.
#   bash scripts/transfer_experiments.sh pneumoniamnist "1 3 10"
#   bash scripts/transfer_experiments.sh fashion-mnist "1"
#   SOURCES=demo ROWS="fold merge50" bash scripts/transfer_experiments.sh fashion-mnist 1   # a part, e.g. beside another
#   SELECT_BY=balanced_accuracy OUT=runs/transfer-balanced SOURCES=demo bash scripts/transfer_experiments.sh pneumoniamnist "1 3 10"
set -euo pipefail
dataset=${1:?dataset}; epochs=${2:-"1 3 10"}; out=${OUT:-runs/transfer}; rows=${ROWS:-"scratch gray3 fold merge50"}; srcs=${SOURCES:-"resnet-cifar-20 demo"}
extra=(--select-by "${SELECT_BY:-accuracy}")  # the validation score that picks the epoch kept (PneumoniaMNIST has a val split)
[ "$dataset" = pneumoniamnist ] && extra+=(--class-weights balanced)  # the shared copy is 9:1 pneumonia:normal
declare -A sources=([resnet-cifar-20]=checkpoints/resnet-cifar-20-30ep.safetensors
                    [demo]=src/achroma/assets/demo-model.safetensors)
for src in $srcs; do
  for e in $epochs; do
    for row in $rows; do
      dir=$out/$dataset/$src/$row-e$e
      [ -f "$dir/report.json" ] && continue
      case $row in
        merge50) start=(--start fold --target-macs 0.5);;
        *) start=(--start $row);;
      esac
      achroma transfer --weights "${sources[$src]}" --dataset "$dataset" --pad 32 --epochs "$e" "${start[@]}" \
        "${extra[@]}" --threads 1 --out "$dir" --force > "$dir.log" 2>&1 || { echo "failed: $dir (see $dir.log)"; continue; }
      echo "done: $dir"
    done
  done
done
