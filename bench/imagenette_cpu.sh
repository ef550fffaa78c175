#!/usr/bin/env bash
# Imagenette learning run on CPU: dino-train against the PyTorch reference for the same
# wall-clock budget, both evaluated by the same k-NN.
#
#   bash bench/imagenette_cpu.sh MINUTES
#
# 1. resolves configs/imagenette-cpu.toml (with OVERRIDES applied) into one file that both
#    trainers read: `dino-train train --print-config`;
# 2. writes the random-initialisation teacher of that config (`--stop-after 0`);
# 3. dino-train trains with `--time-limit MINUTES` (it stops after the epoch that passes the
#    budget and writes its teacher; the config's in-training k-NN gives the curve, outside
#    the budget);
# 4. bench/torch_dino.py train trains the same resolved config with `--minutes MINUTES`
#    (official-style code, torchvision transforms, DataLoader workers) and saves its teacher
#    backbone with the official key names;
# 5. `dino-train knn --nb_knn 20 --temperature 0.07` at the config's eval transform
#    (knn_resize, knn_crop; knn_train against knn_val) evaluates the three teachers;
# then prints one table: run, wall time, training time, epochs, images/s, k-NN top-1/top-5.
#
# Both budgets count training time from the first step (the process start, the data check
# and the k-NN are outside it); the wall column is the whole training command.
# The schedules keep the config's `epochs`, so a budget shorter than the config's epochs
# ends part-way through the cosine schedules, the same way for both.
#
# Environment: BIN (folder with dino-train; default: build target/release), PYTHON,
# CONFIG (default configs/imagenette-cpu.toml), OUT (default runs/imagenette-cpu-bench),
# THREADS (PyTorch compute threads, default 2), OVERRIDES (dino-train flags applied to the
# config for both trainers, e.g. a small data_path for a smoke test:
# OVERRIDES="--data_path DIR --knn_train DIR2 --knn_val DIR3").
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:?usage: bench/imagenette_cpu.sh MINUTES}
source scripts/env.sh
CONFIG=${CONFIG:-configs/imagenette-cpu.toml}
OUT=${OUT:-runs/imagenette-cpu-bench}
THREADS=${THREADS:-2}
read -r -a OVR <<<"${OVERRIDES:-}"
if [ -z "${BIN:-}" ]; then
    cargo build --release -p dino-train --bins >&2
    BIN=target/release
fi
DT="$BIN/dino-train"

if [ -e "$OUT" ]; then
    echo "$OUT exists: remove it or set OUT" >&2
    exit 1
fi
mkdir -p "$OUT"
RESOLVED="$OUT/config.toml"
"$DT" train --config "$CONFIG" "${OVR[@]}" --print-config >"$RESOLVED"
key() { "$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))[sys.argv[2]])' "$RESOLVED" "$1"; }
KNN_TRAIN=$(key knn_train)
KNN_VAL=$(key knn_val)
RESIZE=$(key knn_resize)
CROP=$(key knn_crop)
WORKERS=$(key num_workers)
now() { date +%s.%N; }

echo "== random initialisation" >&2
"$DT" train --quiet --config "$RESOLVED" --output_dir "$OUT/init" --stop-after 0 --knn_freq 0 >&2

echo "== dino-train, $MINUTES min" >&2
t0=$(now)
"$DT" train --quiet --config "$RESOLVED" --output_dir "$OUT/dino-train" --time-limit "$MINUTES" >&2
awk -v a="$(now)" -v b="$t0" "BEGIN { print a - b }" >"$OUT/dino-train/wall_s"

echo "== PyTorch reference, $MINUTES min" >&2
mkdir -p "$OUT/pytorch"
t0=$(now)
"$PYTHON" bench/torch_dino.py train --config "$RESOLVED" --minutes "$MINUTES" --log-epochs \
    --threads "$THREADS" --workers "$WORKERS" --save-teacher "$OUT/pytorch/teacher.safetensors" \
    >"$OUT/pytorch/log.jsonl" 2>"$OUT/pytorch/stderr.txt" || { cat "$OUT/pytorch/stderr.txt" >&2; exit 1; }
awk -v a="$(now)" -v b="$t0" "BEGIN { print a - b }" >"$OUT/pytorch/wall_s"

for run in init dino-train pytorch; do
    echo "== k-NN of $run" >&2
    "$DT" knn --quiet --pretrained_weights "$OUT/$run/teacher.safetensors" --train "$KNN_TRAIN" \
        --val "$KNN_VAL" --resize "$RESIZE" --crop "$CROP" --nb_knn 20 --temperature 0.07 --json \
        >"$OUT/$run/knn.json"
done

"$PYTHON" - "$OUT" "$RESOLVED" "$MINUTES" <<'PY'
import json, sys, tomllib
from pathlib import Path
out, cfg, minutes = Path(sys.argv[1]), tomllib.load(open(sys.argv[2], "rb")), sys.argv[3]

def knn(run):
    r = json.loads((out / run / "knn.json").read_text().splitlines()[0])
    return r["top1"], r["top5"]

def wall(run):
    return float((out / run / "wall_s").read_text())

rows = [("random init", None, None, 0, None, *knn("init"))]
epochs = [json.loads(l) for l in (out / "dino-train" / "metrics.jsonl").read_text().splitlines()]
epochs = [e for e in epochs if e.get("kind") == "epoch"]
secs = sum(e["seconds"] for e in epochs)
imgs = sum(e["images_per_s"] * e["seconds"] for e in epochs)
rows.append(("dino-train", wall("dino-train"), secs, len(epochs), imgs / secs, *knn("dino-train")))
t = [json.loads(l) for l in (out / "pytorch" / "log.jsonl").read_text().splitlines()]
end = next(r for r in t if r["what"] == "train_epochs")
rows.append(("pytorch reference", wall("pytorch"), end["seconds"], end["epochs"], end["images_per_s"],
             *knn("pytorch")))

f = lambda v, p: "-" if v is None else f"{v:.{p}f}"
print(f"{cfg['data_path']}: budget {minutes} min; config of {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
      f"k-NN k=20 T=0.07 at resize {cfg['knn_resize']} crop {cfg['knn_crop']}")
print(f"| run | wall s | training s | epochs | images/s | k-NN top-1 (%) | k-NN top-5 (%) |")
print(f"|---|---|---|---|---|---|---|")
for name, w, s, e, ips, t1, t5 in rows:
    print(f"| {name} | {f(w, 0)} | {f(s, 0)} | {e} | {f(ips, 1)} | {t1:.1f} | {t5:.1f} |")
PY
