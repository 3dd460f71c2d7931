#!/usr/bin/env bash
# Issue 10's measurements on CIFAR-10 (JPEG), one CPU thread per run. Resumable: a finished run is skipped.
# Parts (run two at once on two cores):
#   bash scripts/grouped_experiments.sh pair "densenet-bc-40:color kdensenet-bc-40:color"   # from scratch
#   bash scripts/grouped_experiments.sh pair "densenet-bc-40:gray kdensenet-bc-40:gray"
#   bash scripts/grouped_experiments.sh transform   # group the trained densenet-bc-40 (energy, naive) + distill
#   bash scripts/grouped_experiments.sh refit       # the same transform, least-squares refit, then distill
#   bash scripts/grouped_experiments.sh scratch     # the transform's grouped architecture, re-initialized, trained
#   bash scripts/grouped_experiments.sh demo        # demo model: transform + distill, its grouped architecture from scratch
#   bash scripts/grouped_experiments.sh compose     # demo model: compress then group, group then compress
# Budget knobs: LIMIT training images per class (default 1000), EPOCHS (default 4, the runs in docs/RESULTS.md), MIN channels per group (12).
# Summarize with: python scripts/grouped_table.py runs/grouped
set -euo pipefail
part=${1:?part}; out=${OUT:-runs/grouped}; limit=${LIMIT:-1000}; epochs=${EPOCHS:-4}; min=${MIN:-12}
common=(--threads 1 --seed 0)
mkdir -p "$out"
case $part in
  pair)
    for item in ${2:-"densenet-bc-40:color kdensenet-bc-40:color densenet-bc-40:gray kdensenet-bc-40:gray"}; do
      model=${item%%:*}; mode=${item##*:}; dir=$out/pair/$model-$mode
      [ -f "$dir/model.safetensors" ] && continue
      mkdir -p "$dir"
      { /usr/bin/time -f "wall_seconds %e" achroma train --model "$model" --mode "$mode" --dataset cifar10 \
          --limit "$limit" --epochs "$epochs" --eval-every "$epochs" "${common[@]}" --out "$dir"; } > "$dir.log" 2>&1
      echo "done: $dir"
    done;;
  transform)
    mkdir -p "$out/transform"
    for order in energy naive; do
      dir=$out/transform/densenet-bc-40-color-$order
      [ -f "$dir/report.json" ] && continue
      { /usr/bin/time -f "wall_seconds %e" achroma group --weights "$out/pair/densenet-bc-40-color/model.safetensors" \
          --dataset cifar10 --calib-limit "$limit" --min-channels "$min" --order "$order" --repair distill --epochs 1 \
          "${common[@]}" --out "$dir" --force; } > "$dir.log" 2>&1
      echo "done: $dir"
    done;;
  refit)  # the energy transform repaired by least squares first (no training), then the same distillation
    dir=$out/transform/densenet-bc-40-color-energy-refit
    mkdir -p "$out/transform"
    [ -f "$dir/report.json" ] || { /usr/bin/time -f "wall_seconds %e" achroma group \
        --weights "$out/pair/densenet-bc-40-color/model.safetensors" --dataset cifar10 --calib-limit "$limit" \
        --min-channels "$min" --repair ls-refit+distill --refit-images 2000 --epochs 1 "${common[@]}" \
        --out "$dir" --force; } > "$dir.log" 2>&1
    echo "done: $dir";;
  scratch)  # the same grouped architecture as the energy transform, every weight drawn afresh, epochs + 1
    dir=$out/transform/scratch-grouped-e$((epochs + 1))
    [ -f "$dir/model.safetensors" ] || {
      mkdir -p "$dir"
      { /usr/bin/time -f "wall_seconds %e" achroma train --weights "$out/transform/densenet-bc-40-color-energy/model.safetensors" \
          --reinit --dataset cifar10 --limit "$limit" --epochs $((epochs + 1)) --eval-every $((epochs + 1)) \
          "${common[@]}" --out "$dir"; } > "$dir.log" 2>&1
      echo "done: $dir"; };;
  demo)  # the demo model (trained 8 epochs): transform + 1 distill epoch, and its grouped architecture from
          # scratch for 8 + 1 epochs on the embedded 5,000-image sample (the full set is out of the CPU budget)
    demo=src/achroma/assets/demo-model.safetensors; data=tar:src/achroma/assets/demo-cifar10-jpeg.tar.gz
    d=$out/demo
    mkdir -p "$d"
    [ -f "$d/group-m16/report.json" ] || achroma group --weights $demo --dataset $data --min-channels 16 --repair distill \
      --epochs 1 "${common[@]}" --out "$d/group-m16" --force > "$d/group-m16.log" 2>&1
    [ -f "$d/group-m16-refit/report.json" ] || achroma group --weights $demo --dataset $data --min-channels 16 \
      --repair ls-refit+distill --epochs 1 "${common[@]}" --out "$d/group-m16-refit" --force > "$d/group-m16-refit.log" 2>&1
    [ -f "$d/scratch-grouped-e9/model.safetensors" ] || { /usr/bin/time -f "wall_seconds %e" achroma train \
      --weights "$d/group-m16/model.safetensors" --reinit --dataset $data --epochs 9 --eval-every 9 "${common[@]}" \
      --out "$d/scratch-grouped-e9"; } > "$d/scratch-grouped-e9.log" 2>&1
    echo "done: $d";;
  compose)  # uneven rule: the merged transitions' channel counts share no divisor. No repair inside; the same final repair for both orders: 1 epoch distilled from the color model
    demo=src/achroma/assets/demo-model.safetensors; data=tar:src/achroma/assets/demo-cifar10-jpeg.tar.gz
    c=$out/compose
    mkdir -p "$c"
    [ -f "$c/merge/model.safetensors" ] || achroma compress --weights $demo --dataset $data --target-macs 0.5 \
      --repair none "${common[@]}" --out "$c/merge" --force > "$c/merge.log" 2>&1
    [ -f "$c/merge-group/model.safetensors" ] || achroma group --weights "$c/merge/model.safetensors" --dataset $data \
      --min-channels 16 --rule uneven "${common[@]}" --out "$c/merge-group" --force > "$c/merge-group.log" 2>&1
    [ -f "$c/group/model.safetensors" ] || achroma group --weights $demo --dataset $data --min-channels 16 \
      --rule uneven "${common[@]}" --out "$c/group" --force > "$c/group.log" 2>&1
    [ -f "$c/group-merge/model.safetensors" ] || achroma compress --weights "$c/group/model.safetensors" --dataset $data \
      --target-macs 0.5 --repair none "${common[@]}" --out "$c/group-merge" --force > "$c/group-merge.log" 2>&1
    for order in merge merge-group group-merge; do
      [ -f "$c/$order-distill/model.safetensors" ] && continue
      mkdir -p "$c/$order-distill"
      achroma distill --teacher $demo --student "$c/$order/model.safetensors" --student-mode gray --dataset $data \
        --loss mse --epochs 1 --lr 0.003 --batch-size 32 --no-augment --schedule cosine --seed 0 \
        --out "$c/$order-distill" > "$c/$order-distill.log" 2>&1
      echo "done: $c/$order-distill"
    done;;
  *) echo "unknown part: $part" >&2; exit 2;;
esac
