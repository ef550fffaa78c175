#!/usr/bin/env bash
# Data-parallel training step on CPU, side by side in one run: 1 rank x 2 threads against
# 2 ranks x 1 thread (Gloo over 127.0.0.1), the same total batch, the cifar-tiny model.
#
#   bash bench/ddp.sh [ROUNDS]        (default 2 rounds, alternating)
#
# Each row is `dino-train bench --breakdown` (synthetic crops already in memory, so the
# model, the gradient all-reduce and the update are measured, not the data): total
# images/s, ms per step, and the all-reduce's ms per step and share of the step (the goal:
# communication <= 10% of the step). On a GPU machine, DEVICE=cuda gives the world-size-1
# NCCL row (the all-reduce of the flat gradient buffer with one rank).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ROUNDS=${1:-2}
BATCH=${BATCH:-128}
STEPS=${STEPS:-6}
DEVICE=${DEVICE:-cpu}
BIN=${BIN:-target/release}
[ -x "$BIN/dino-train" ] || cargo build --release -p dino-train >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
common=(bench --config configs/cifar-tiny.toml --device "$DEVICE" --warmup 2
        --steps "$STEPS" --breakdown)

for r in $(seq "$ROUNDS"); do
    OMP_NUM_THREADS=2 "$BIN/dino-train" "${common[@]}" --batch_size "$BATCH" \
        | sed 's/^/1x2 /' >>"$TMP/rows"
    if [ "$DEVICE" = cpu ]; then
        OMP_NUM_THREADS=1 "$BIN/dino-train" "${common[@]}" --batch_size_per_gpu $((BATCH / 2)) \
            --nproc_per_node 2 | sed 's/^/2x1 /' >>"$TMP/rows"
    else
        "$(dirname "$PYTHON")/torchrun" --standalone --nproc_per_node 1 --no-python \
            "$BIN/dino-train" "${common[@]}" --batch_size "$BATCH" | sed 's/^/nccl1 /' >>"$TMP/rows"
    fi
    tail -n 2 "$TMP/rows" >&2
done

"$PYTHON" - "$TMP/rows" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, _, js = line.partition(" ")
    rows.setdefault(name, []).append(json.loads(js))
labels = {"1x2": "1 rank x 2 threads", "2x1": "2 ranks x 1 thread (Gloo)",
          "nccl1": "1 rank, NCCL (world size 1)"}
print("| setup | total batch | images/s | step ms | all-reduce ms | all-reduce share |")
print("|---|---|---|---|---|---|")
for name, rs in rows.items():
    med = lambda f: statistics.median(f(r) for r in rs)
    world = rs[0].get("world_size", 1)
    ips, step = med(lambda r: r["images_per_s"]), med(lambda r: r["step_ms"])
    ar = med(lambda r: r["breakdown"].get("allreduce_ms", 0.0))
    total = med(lambda r: sum(r["breakdown"].values()))
    share = f"{100 * ar / total:.1f}%" if ar else "-"
    print(f"| {labels[name]} | {rs[0]['batch_size'] * world} | {ips:.1f} | {step:.0f} | "
          f"{ar:.1f} | {share} |")
PY
