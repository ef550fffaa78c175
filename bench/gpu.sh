#!/usr/bin/env bash
# dino-train on an NVIDIA GPU, side by side with a PyTorch reference written like the
# official code, in one table. For a machine that has torch 2.11.0 (CUDA) for its python3,
# no network and no cargo: the binaries are built elsewhere and passed in with BIN.
#
#   BIN=dir/with/dino-train+data_bench bench/gpu.sh            # ~6 minutes on one H100
#   bench/gpu.sh --dry-run                                       # tiny model on CPU (CI)
#
# Rows: the training step on synthetic crops already on the device (ViT-S/16, 2x224 +
# 10x96 crops, out_dim 65536, batch 256 or the largest that fits), for dino-train (bf16
# autocast, fused attention) and the reference (fp16 autocast + GradScaler, explicit
# attention); the multi-crop data pipeline alone on all CPU cores; `dino-train train` end to
# end on JPEG files (pipeline and step together); a k-NN smoke check (1 epoch of cifar-tiny,
# then dino-train knn). Peak GPU memory is sampled with nvidia-smi.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
PY=${PYTHON:-python3}
BIN=${BIN:-target/release}
DATA=${DATA:-../shared/data}
OUT=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
TORCH_LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
DATA_BENCH="$BIN/data_bench"
[[ -x "$DATA_BENCH" ]] || DATA_BENCH="$BIN/examples/data_bench"
ROWS="$OUT/rows.jsonl"
: >"$ROWS"

if [[ $DRY == 1 ]]; then
    DEVICE=cpu
    MODEL=(--arch vit_tiny --patch_size 16 --depth 2 --out_dim 1024 --head_hidden_dim 256
           --global_crop_size 64 --local_crop_size 32 --local_crops_number 2)
    REF=(--arch vit_tiny --patch 16 --depth 2 --out-dim 1024 --hidden 256 --global 64
         --local 32 --nlocal 2 --batch 4 --precision fp32)
    STEPS=(--warmup 1 --steps 2)
    REF_STEPS=(--warmup 1 --steps 2)
    PIPE=(--global 64 --local 32 --n-local 2 --threads 2 --batch 8 --samples 32)
    PHOTO=(--global 64 --local 32 --n-local 2 --batch 4 --iters 1)
    KNN_EPOCHS=(--depth 1 --batch_size 32 --out_dim 256 --head_hidden_dim 64)
    KNN_DATA=demo/data   # the vendored 500 + 200 images: the row only has to be produced
    N_SYN=40
    COPIES=2
else
    DEVICE=cuda
    MODEL=(--config configs/vit-small-imagenet.toml)
    REF=(--arch vit_small --patch 16 --out-dim 65536 --hidden 2048 --global 224 --local 96
         --nlocal 10 --precision fp16)
    STEPS=(--warmup 5 --steps 20)
    REF_STEPS=(--warmup 5 --steps 20)
    PIPE=(--global 224 --local 96 --n-local 10 --threads "$(nproc)" --batch 64 --samples 4000)
    PHOTO=(--global 224 --local 96 --n-local 10 --batch 256 --iters 10)
    KNN_EPOCHS=()
    KNN_DATA="$DATA/cifar10-mini"
    N_SYN=1000
    COPIES=10
fi

# Peak GPU memory of a command: nvidia-smi sampled every 100 ms, minus the idle level.
gpu_peak() {
    local log="$OUT/smi.$RANDOM" base=0 pid rc=0
    if command -v nvidia-smi >/dev/null && [[ $DEVICE == cuda ]]; then
        base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log" &
        pid=$!
    fi
    "$@" || rc=$?
    if [[ -n "${pid:-}" ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        PEAK_MIB=$(( $(sort -n "$log" | tail -1) - base ))
    else
        PEAK_MIB=null
    fi
    return $rc
}

# The training step of `$fn BATCH`; on out-of-memory, retry with half the batch.
step_row() {
    local who=$1 batch=$2 fn=$3
    while (( batch >= 1 )); do
        if gpu_peak "$fn" "$batch" >"$OUT/step.json" 2>"$OUT/step.err"; then
            "$PY" - "$OUT/step.json" "$who" "$PEAK_MIB" >>"$ROWS" <<'EOF'
import json, sys
row = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
row.update(who=sys.argv[2], peak_gpu_mib=None if sys.argv[3] == "null" else int(sys.argv[3]))
print(json.dumps(row))
EOF
            return 0
        fi
        grep -qi "out of memory" "$OUT/step.err" || { cat "$OUT/step.err" >&2; return 1; }
        batch=$(( batch / 2 ))
        echo "$who: out of memory, retrying with batch $batch" >&2
    done
    return 1
}
dino_step() {
    "$BIN/dino-train" bench "${MODEL[@]}" --device "$DEVICE" "${STEPS[@]}" --batch_size "$1"
}
ref_step() {
    "$PY" bench/torch_dino.py step "${REF[@]}" --device "$DEVICE" "${REF_STEPS[@]}" --batch "$1"
}
BATCH=256
[[ $DRY == 1 ]] && BATCH=4
step_row dino-rs "$BATCH" dino_step
step_row pytorch-reference "$BATCH" ref_step
# Where dino-train's step time goes: as many steps again, synchronised after each part.
"$BIN/dino-train" bench "${MODEL[@]}" --device "$DEVICE" "${STEPS[@]}" --batch_size "$BATCH" \
    --breakdown 2>/dev/null | "$PY" -c 'import json, sys
row = json.loads(sys.stdin.read().strip().splitlines()[-1])
print(json.dumps(dict(who="dino-rs step breakdown", **{k: round(v, 1) for k, v in row["breakdown"].items()})))' >>"$ROWS"

# The data pipeline alone, on JPEGs of ImageNet-like size made here (no dataset needed).
SYN="$OUT/synthetic"
"$PY" - "$SYN" "$N_SYN" <<'EOF'
import sys, numpy as np
from pathlib import Path
from PIL import Image
root, n = Path(sys.argv[1]) / "all", int(sys.argv[2])
root.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:375, 0:500] / 60.0
for i in range(n):
    f = rng.uniform(0.5, 2.0, size=3)
    img = np.stack([np.sin(xx * f[c] + yy * f[(c + 1) % 3] + i) for c in range(3)], -1)
    Image.fromarray(((img + 1) * 127.5).astype(np.uint8)).save(root / f"{i:05d}.jpg", quality=90)
EOF
label() {
    "$PY" -c 'import json, sys
row = json.loads(sys.stdin.read().strip().splitlines()[-1]); row.update(who=sys.argv[1]); print(json.dumps(row))' "$1"
}
"$DATA_BENCH" --root "$SYN" "${PIPE[@]}" | label "dino-rs data pipeline, all on the CPU" >>"$ROWS"
# Training on CUDA keeps decode + crop + resize on the CPU and runs the photometric part as
# batched tensor ops on the GPU (photometric = "auto"): each half alone.
"$DATA_BENCH" --root "$SYN" "${PIPE[@]}" --deferred | label "dino-rs data pipeline, CPU side (decode, crop, resize)" >>"$ROWS"
"$DATA_BENCH" --photometric-device --device "$DEVICE" "${PHOTO[@]}" | label "dino-rs photometric stage on the $DEVICE" >>"$ROWS"

# Training end to end on those JPEGs, each linked COPIES times (one epoch of 10,000 files):
# the CPU workers decode, crop and resize, the photometric stage and the step run on the
# device. Images/s: the median of the metrics log's 5-step windows, the first one left out.
E2E="$OUT/e2e"
rm -rf "$E2E"
"$PY" - "$SYN/all" "$E2E/data/all" "$COPIES" <<'EOF'
import os, sys
src, dst, copies = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(dst)
for k in range(copies):
    for f in sorted(os.listdir(src)):
        os.link(os.path.join(src, f), os.path.join(dst, f"{k}-{f}"))
EOF
gpu_peak "$BIN/dino-train" train --quiet "${MODEL[@]}" --device "$DEVICE" --batch_size "$BATCH" \
    --data_path "$E2E/data" --output_dir "$E2E/run" --epochs 1 --warmup_epochs 0 \
    --num_workers "$(nproc)" --log_freq 5 >/dev/null
"$PY" - "$E2E/run/metrics.jsonl" "$PEAK_MIB" "$BATCH" >>"$ROWS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
windows = [r["images_per_s"] for r in rows if r["kind"] == "step"][1:]
epoch = [r for r in rows if r["kind"] == "epoch"][-1]
print(json.dumps(dict(
    who="dino-rs train end to end (JPEG files, photometric = auto)",
    batch_size=int(sys.argv[3]),
    images_per_s=round(statistics.median(windows), 1) if windows else None,
    epoch_images_per_s=round(epoch["images_per_s"], 1),
    peak_gpu_mib=None if sys.argv[2] == "null" else int(sys.argv[2]))))
EOF

# k-NN smoke check: one epoch of cifar-tiny on the device, then the teacher's k-NN.
RUN="$OUT/knn-run"
rm -rf "$RUN"
"$BIN/dino-train" train --quiet --config configs/cifar-tiny.toml --data_path "$KNN_DATA/train" \
    --output_dir "$RUN" --epochs 1 --warmup_epochs 0 --device "$DEVICE" "${KNN_EPOCHS[@]}" >/dev/null
"$BIN/dino-train" knn --quiet --json --checkpoint "$RUN/teacher.safetensors" --device "$DEVICE" \
    --train "$KNN_DATA/train" --val "$KNN_DATA/test" --native \
    | label "k-NN smoke (cifar-tiny, 1 epoch)" >>"$ROWS"

"$PY" bench/gpu_table.py "$ROWS"
