#!/usr/bin/env bash
# cifar-tiny training speed on CPU, dino-train against the PyTorch reference, side by side.
#
#   bash bench/cpu_train.sh [RUNS]        (default 3 runs of each, alternating)
#
# Both train configs/cifar-tiny.toml (ViT patch 4, width 192, depth 6, out_dim 4096, batch
# 128, 2 global 32px + 6 local 16px crops, AdamW, warmup 2 of 10 epochs) on the same
# ImageFolder for one epoch's worth of steps (`--stop-after 1` / `--max-steps` = steps of
# one epoch), data loading with 2 workers included, 2 compute threads for PyTorch (its
# default here), dino-train with its own CPU thread policy. Prints one table with the
# median images/s of each. Timings on a shared machine are noisy: compare medians.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
RUNS=${1:-3}
DATA=${DATA:-../shared/data/cifar10-mini/train}
cargo build --release -p dino-train >&2
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
nimg=$(find "$DATA" -type f | wc -l)
steps=$((nimg / 128))

for r in $(seq "$RUNS"); do
    rm -rf "$TMP/run"
    target/release/dino-train train --config configs/cifar-tiny.toml --data_path "$DATA" \
        --output_dir "$TMP/run" --stop-after 1 --knn_freq 0 --num_workers 2 2>&1 \
        | grep -o '[0-9.]* img/s, [0-9]*s' | sed 's/^/dino-train /' >>"$TMP/results"
    "$PYTHON" bench/torch_dino.py train --arch custom --patch 4 --dim 192 --depth 6 --heads 3 \
        --out-dim 4096 --hidden 1024 --global 32 --local 16 --nlocal 6 --batch 128 \
        --epochs 10 --warmup-epochs 2 --max-steps "$steps" --data "$DATA" --workers 2 \
        --threads 2 2>/dev/null \
        | "$PYTHON" -c 'import json, sys; r = json.loads(sys.stdin.read()); print("pytorch %.1f img/s, %.0fs" % (r["images_per_s"], r["seconds"]))' \
        >>"$TMP/results"
    tail -2 "$TMP/results" >&2
done

"$PYTHON" - "$TMP/results" "$steps" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, ips = line.split()[:2]
    rows.setdefault(name, []).append(float(ips))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"cifar-tiny, {sys.argv[2]} steps of batch 128, CPU, {len(rows['pytorch'])} runs each")
print(f"{'':12} {'median img/s':>13}  runs")
for k in ("dino-train", "pytorch"):
    print(f"{k:12} {med[k]:13.1f}  {' '.join(f'{x:.1f}' for x in rows[k])}")
print(f"speed-up of dino-train: {med['dino-train'] / med['pytorch']:.2f}x")
PY
