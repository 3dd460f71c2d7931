#!/usr/bin/env bash
# docs/RESULTS.md, "Deployment": color vs folded vs merged (about 50% of the MACs), in PyTorch eager and
# ONNX Runtime, batch-1 latency and batch-64 throughput on 1 and 2 threads, for the demo model and for
# a resnet-cifar-20 with seeded, untrained weights (latency and MACs do not depend on training).
#
#   benchmarks/deploy_speed.sh [OUT_ROOT]        (default runs/deploy; needs achroma[onnx])
#
# The merged models come from `achroma compress` on the shipped CIFAR-10 (JPEG) demo images:
#   demo: all 15 convs but the classifier, keeping about 70% of each layer's filters (MACs ~ 0.7^2),
#         repaired by 1 epoch of distillation from the color model on the 5,000 demo training images;
#   r20:  the first conv of each of the 9 residual blocks (its inner channels), keeping about 50%.
# Each model is then exported with `achroma export` (ONNX Runtime checked against PyTorch on 256 test
# images) and all three of a family are timed in one `achroma bench` run (round-robin).
set -euo pipefail
root=${1:-runs/deploy}
demo_data="tar:$(python -c 'from achroma.demo import assets_dir, DEMO_DATA; print(assets_dir() / DEMO_DATA)')"
demo=src/achroma/assets/demo-model.safetensors
mkdir -p "$root"

python benchmarks/deploy_models.py "$root"

blocks=$(printf 'layer%s.%s.conv1,' 1 0 1 1 1 2 2 0 2 1 2 2 3 0 3 1 3 2)
[ -f "$root/demo-merged/model.safetensors" ] || \
  achroma compress --weights "$demo" --dataset "$demo_data" --layers first:15 --keep 0.7 --repair distill,bn-stats \
    --no-latency --quiet --out "$root/demo-merged" > "$root/demo-merged.md"
[ -f "$root/r20-merged/model.safetensors" ] || \
  achroma compress --weights "$root/r20-color.safetensors" --dataset "$demo_data" --layers "${blocks%,}" \
    --keep 0.5 --repair none --no-latency --quiet --out "$root/r20-merged" > "$root/r20-merged.md"

for m in "$demo" "$root/demo-folded.safetensors" "$root/demo-merged/model.safetensors" \
         "$root/r20-color.safetensors" "$root/r20-folded.safetensors" "$root/r20-merged/model.safetensors"; do
  name=$(basename "$m" .safetensors)
  [ "$name" = model ] && name=$(basename "$(dirname "$m")")   # compress writes <out>/model.safetensors
  achroma export --weights "$m" --format onnx --out "$root/onnx/$name.onnx" --force
done

achroma bench --weights "$demo" --weights "$root/demo-folded.safetensors" --weights "$root/demo-merged/model.safetensors" \
  --name "demo color" --name "demo folded" --name "demo merged" --threads 1,2 --runs 100 --throughput-runs 10 --out "$root/bench-demo" --force
achroma bench --weights "$root/r20-color.safetensors" --weights "$root/r20-folded.safetensors" \
  --weights "$root/r20-merged/model.safetensors" --name "r20 color" --name "r20 folded" --name "r20 merged" \
  --threads 1,2 --runs 100 --throughput-runs 10 --out "$root/bench-r20" --force

python benchmarks/deploy_table.py "$root/bench-demo/bench.json" "$root/bench-r20/bench.json"
