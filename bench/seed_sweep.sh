#!/usr/bin/env bash
# cifar-tiny for several seeds, dino-train and the PyTorch reference (written after the
# official code) one after the other, printing each run's per-epoch mean loss and final k-NN
# top-1 as JSON lines prefixed by the implementation and seed (BENCHMARKS.md, seed sweep).
#
#   BIN=target/release DATA=../shared/data/cifar10-mini DEVICE=cuda SEEDS="0 1 2" \
#       bash bench/seed_sweep.sh > sweep.log
#
# fp32 everywhere, as the official run on a CPU; about 50 s (dino-train) and 100 s (the
# reference) per seed on one H200, about 25 and 25 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BIN=${BIN:-target/release}
DATA=${DATA:-../shared/data/cifar10-mini}
DEVICE=${DEVICE:-cpu}
SEEDS=${SEEDS:-0 1 2}
RUN=$(mktemp -d)
trap 'rm -rf "$RUN"' EXIT
for seed in $SEEDS; do
    rm -rf "$RUN/tiny"
    "$BIN/dino-train" train --quiet --config configs/cifar-tiny.toml --data_path "$DATA/train" \
        --knn_train "$DATA/train" --knn_val "$DATA/test" --knn_freq 10 --output_dir "$RUN/tiny" \
        --num_workers 2 --precision fp32 --photometric cpu --device "$DEVICE" --seed "$seed" >/dev/null
    grep -v '"kind":"step"' "$RUN/tiny/metrics.jsonl" | sed "s/^/dino-rs seed=$seed /"
    "$PY" bench/torch_dino.py train --arch custom --patch 4 --dim 192 --depth 6 --heads 3 \
        --out-dim 4096 --hidden 1024 --global 32 --local 16 --nlocal 6 --batch 128 --epochs 10 \
        --warmup-epochs 2 --data "$DATA/train" --workers 3 --threads 2 --device "$DEVICE" \
        --seed "$seed" --log-epochs --knn-train "$DATA/train" --knn-val "$DATA/test" 2>/dev/null \
        | sed "s/^/reference seed=$seed /"
done
