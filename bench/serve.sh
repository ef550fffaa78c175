#!/usr/bin/env bash
# dino-run serve against the batch CLI on the same model and images (issue 18's targets):
#   * throughput with 16 concurrent clients (one image per request) vs `dino-run embed`
#     on the same images (target >= 0.9x);
#   * latency p50/p99 at 1 client vs a warm single-image CLI inference (target within 5 ms);
#   * peak RSS of the server under the 16-client load.
#   bench/serve.sh     # seeded ViT-S/16 at 224, 2 threads: 3 rounds of 192 images, 480 pairs
#   MODEL_ARGS="--img 64 --patch 16" IMAGES=64 LATENCY_IMAGES=64 bench/serve.sh   # quick
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release -p dino-runtime >&2
exec "$PYTHON" bench/serve_bench.py \
    --threads "${THREADS:-2}" --images "${IMAGES:-192}" --clients "${CLIENTS:-16}" \
    --rounds "${ROUNDS:-3}" --latency-images "${LATENCY_IMAGES:-480}" \
    --model-args "${MODEL_ARGS:---img 224 --patch 16 --dim 384 --depth 12 --heads 6}"
