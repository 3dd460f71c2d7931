#!/usr/bin/env bash
# docs/RESULTS.md, "The gray model at deployment: int8, fused layers, rounded widths (issue 23)".
#
#   PYTHONPATH=src bash benchmarks/int8_table.sh [OUT_ROOT] [DATA_DIR]
#       (defaults runs/int8 and ../shared/datasets; needs achroma[onnx]; every step 1 thread;
#        a step whose output exists is skipped, so a rerun only redoes what is missing)
#
# Per CIFAR family (the trained ResNet-20 checkpoint and the demo model):
#   color fp32, folded fp32 (benchmarks/int8_models.py), and from `achroma compress` at 50% of the
#   folded model's MACs (widths as the budget gives them, and rounded to multiples of 8) and at 30%
#   (rounded to 8; the demo model's widths as the budget gives them: its 12-channel groups cannot
#   keep a multiple of 8 below 8, and 30% then needs less): every channel group merged by k-means on the kernels (the default with a target),
#   repaired by 1 epoch of logit distillation from the color model on 5,000 CIFAR-10 (JPEG) training
#   images (500 a class). Each model is exported with `achroma export --quantize int8` (300 stratified
#   training images to calibrate; int8 and float accuracy on the 10,000 CIFAR-10 (JPEG) test images;
#   --force: written whatever the drop, which the log reports), and the float models are timed with
#   `achroma bench --int8` (PyTorch eager, PyTorch deploy form, ONNX Runtime float and int8, 1 thread).
# torchvision resnet18 and mobilenet_v2 (seeded, untrained): the same budgets, filters chosen by
#   --selection l1 (magnitude pruning; on random weights only the widths matter, and k-means of
#   mobilenet_v2's 960-channel groups took 7 minutes a model), --repair none, timed at 224x224 on 1
#   channel (speed and size only).
set -euo pipefail
root=${1:-runs/int8}
data=${2:-../shared/datasets}
demo=src/achroma/assets/demo-model.safetensors
r20=checkpoints/resnet-cifar-20-30ep.safetensors
demo_data="tar:$(python -c 'from achroma.demo import assets_dir, DEMO_DATA; print(assets_dir() / DEMO_DATA)')"
mkdir -p "$root/log" "$root/onnx"
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

[ -f "$root/r20-folded.safetensors" ] || python benchmarks/int8_models.py "$root"

compress() {  # name color-weights target round-to dataset-args... ; repair from $REPAIR
  local name=$1 weights=$2 target=$3 round=$4; shift 4
  [ -f "$root/$name/model.safetensors" ] && return 0
  log "compress $name"
  achroma compress --weights "$weights" "$@" --layers all --target-macs "$target" --round-to "$round" \
    --repair "$REPAIR" --threads 1 --no-latency --quiet --out "$root/$name" --force > "$root/log/$name.md"
}

REPAIR=distill
for fam in r20 demo; do
  w=$r20; [ $fam = demo ] && w=$demo
  compress "$fam-50" "$w" 0.5 1 --dataset cifar10 --data-dir "$data" --calib-limit 500
  compress "$fam-50r8" "$w" 0.5 8 --dataset cifar10 --data-dir "$data" --calib-limit 500
  if [ $fam = demo ]; then
    compress "$fam-30" "$w" 0.3 1 --dataset cifar10 --data-dir "$data" --calib-limit 500
  else
    compress "$fam-30r8" "$w" 0.3 8 --dataset cifar10 --data-dir "$data" --calib-limit 500
  fi
done
REPAIR=none
for arch in resnet18 mobilenet_v2; do
  w=$root/tv-$arch-color.safetensors
  compress "tv-$arch-50" "$w" 0.5 1 --dataset "$demo_data" --test-limit 1 --selection l1
  compress "tv-$arch-50r8" "$w" 0.5 8 --dataset "$demo_data" --test-limit 1 --selection l1
  compress "tv-$arch-30r8" "$w" 0.3 8 --dataset "$demo_data" --test-limit 1 --selection l1
done

t30() { if [ "$1" = demo ]; then echo 30; else echo 30r8; fi; }  # the 30% model's name

family() {  # the five checkpoints of a family: color folded 50 50r8 30r8 (demo: 30)
  case $1 in
    r20) echo "$r20 $root/r20-folded.safetensors" ;;
    demo) echo "$demo $root/demo-folded.safetensors" ;;
    *) echo "$root/$1-color.safetensors $root/$1-folded.safetensors" ;;
  esac
  for s in 50 50r8 $(t30 $1); do echo "$root/$1-$s/model.safetensors"; done
}

for fam in r20 demo; do
  set -- $(family $fam)
  for pair in "color:$1" "folded:$2" "50:$3" "50r8:$4" "$(t30 $fam):$5"; do
    name=$fam-${pair%%:*} w=${pair#*:}
    [ -f "$root/onnx/$name-int8.onnx" ] && continue
    log "export $name"
    achroma export --weights "$w" --out "$root/onnx/$name-int8.onnx" --quantize int8 --dataset cifar10 \
      --data-dir "$data" --threads 1 --force > "$root/log/export-$name.txt"
  done
done

bench() {  # family size runs throughput-runs engines
  local fam=$1 size=$2 runs=$3 truns=$4 engines=$5
  [ -f "$root/bench-$fam/bench.json" ] && return 0
  log "bench $fam"
  local last="30% r8"; [ "$fam" = demo ] && last="30%"
  set -- $(family $fam)
  achroma bench --weights "$1" --weights "$2" --weights "$3" --weights "$4" --weights "$5" \
    --name "$fam color" --name "$fam folded" --name "$fam 50%" --name "$fam 50% r8" --name "$fam $last" \
    --size "$size" --engines "$engines" --int8 --threads 1 --runs "$runs" --throughput-runs "$truns" \
    --out "$root/bench-$fam" --force > /dev/null
}
bench r20 32 100 10 torch,torch-deploy,onnxruntime
bench demo 32 100 10 torch,torch-deploy,onnxruntime
bench tv-resnet18 224 20 3 torch-deploy,onnxruntime
bench tv-mobilenet_v2 224 20 3 torch-deploy,onnxruntime

python benchmarks/int8_table.py "$root"
