#!/usr/bin/env bash
# Multi-crop data pipeline throughput: dino-rs (Rust) vs torchvision (PIL transforms +
# DataLoader), same workloads, one table.
#   bench/data_pipeline.sh            # 1 worker thread each
#   THREADS="1 2" bench/data_pipeline.sh
# "per core" divides by the CPU seconds the pipeline actually used (all its threads and
# worker processes), so it stays meaningful on a busy machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
BIN=${DATA_BENCH_BIN:-}
if [[ -z "$BIN" ]]; then
    cargo build --release -p dino-train --example data_bench >&2
    BIN=target/release/examples/data_bench
fi
DATA=../shared/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The 7 sample photos (PNG/JPEG, RGB/gray/RGBA, 300-741 px), 8 links each, one class.
mkdir -p "$tmp/photos/all"
for k in 0 1 2 3 4 5 6 7; do
    for f in "$DATA"/photos/*; do ln -s "$(realpath "$f")" "$tmp/photos/all/${k}_$(basename "$f")"; done
done
CIFAR=(--root "$DATA/cifar10-mini/train" --global 32 --local 16 --n-local 6 --batch 64)
PHOTOS=(--root "$tmp/photos" --global 224 --local 96 --n-local 10 --batch 8)
for t in ${THREADS:-1}; do
    echo "cifar10-mini 32/16 2+6 $("$BIN" "${CIFAR[@]}" --threads "$t" --samples 5000)"
    echo "cifar10-mini 32/16 2+6 $("$PYTHON" bench/data_pipeline_torchvision.py "${CIFAR[@]}" --threads "$t" --samples 1280)"
    echo "photos 224/96 2+10 $("$BIN" "${PHOTOS[@]}" --threads "$t" --samples 400)"
    echo "photos 224/96 2+10 $("$PYTHON" bench/data_pipeline_torchvision.py "${PHOTOS[@]}" --threads "$t" --samples 96)"
done | "$PYTHON" bench/data_pipeline_table.py
