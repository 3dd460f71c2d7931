#!/usr/bin/env bash
# The notebook's experiment (issue 4) with a given color checkpoint on CIFAR-10 (JPEG):
# first layer; first two layers; the notebook's setting (MSE then IMED, DBSCAN); each repair;
# fields from the gray model as merged so far (current) and from the color model (the default).
# Every run scores the full 10,000-image test set and repairs on 500 training images per class.
#
#   scripts/compress_experiments.sh WEIGHTS OUT_ROOT [extra achroma compress arguments]
#   scripts/compress_experiments.sh src/achroma/assets/demo-model.safetensors runs/compress-demo
#
# Each run writes OUT_ROOT/<name>/ (model, report.md, report.json, figures); the table is report.md.
set -euo pipefail
weights=${1:?usage: $0 WEIGHTS OUT_ROOT [extra args]}
root=${2:?usage: $0 WEIGHTS OUT_ROOT [extra args]}
shift 2
data=(--dataset cifar10 --data-dir "${ACHROMA_DATA_DIR:-../shared/datasets}")
common=(--repair bn-train,bn-stats,distill --calib-limit 500 "$@")

run() {
  local name=$1
  shift
  echo "== $name: achroma compress --weights $weights ${data[*]} $* ${common[*]} --out $root/$name"
  achroma compress --weights "$weights" "${data[@]}" "$@" "${common[@]}" --out "$root/$name" --quiet \
    > "$root/$name.md"
  sed -n '/^| model/,/^$/p' "$root/$name.md"
}

mkdir -p "$root"
run first1-mse-keep55 --layers first:1 --metric mse --keep 0.55 --fields-from current
run first2-mse-keep55 --layers first:2 --metric mse --keep 0.55 --fields-from current
run first2-mse-imed-keep55 --layers first:2 --metric mse,imed --keep 0.55 --fields-from current
run first2-mse-imed-keep55-colorfields --layers first:2 --metric mse,imed --keep 0.55 --fields-from color
run first1-mse-keep55-colorfields --layers first:1 --metric mse --keep 0.55 --fields-from color
