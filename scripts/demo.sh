#!/usr/bin/env bash
# The README's first command (`make demo`, which builds the binaries first): train briefly
# on the vendored CIFAR-10 images, export a teacher to ONNX, index the training images,
# classify the test images by k-NN and draw the attention map of a photo. Everything goes
# to runs/demo/ (replaced on every run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${CARGO_TARGET_DIR:-target}/release
DATA=demo/data
OUT=runs/demo
SHIPPED=demo/teacher.safetensors
THREADS=${DEMO_THREADS:-0}

for b in dino-train dino-export dino-run; do
    [[ -x $BIN/$b ]] || { echo "error: $BIN/$b is not built: run \`make demo\`" >&2; exit 2; }
done
for d in "$DATA/train" "$DATA/test" "$DATA/photos/chelsea.png"; do
    [[ -e $d ]] || { echo "error: $d is missing (vendored demo data, see demo/data/README.md)" >&2; exit 2; }
done

step() { printf '\n== %s\n' "$*"; }
start=$SECONDS
rm -rf "$OUT"
mkdir -p "$OUT"

step "1/5 train: configs/demo.toml, 2 epochs on $(find "$DATA/train" -name '*.jpg' | wc -l) images ($OUT/train)"
"$BIN/dino-train" train --config configs/demo.toml --data_path "$DATA/train" \
    --output_dir "$OUT/train" 2>&1 | grep -v -e '^$' -e 'no k-NN evaluations' | sed 's/^/   /'

if [[ -f $SHIPPED ]]; then
    TEACHER=$SHIPPED
    NOTE="the shipped teacher $SHIPPED (trained long on the CIFAR-10 subset; DINO needs far more than a few CPU minutes to learn useful features)"
else
    TEACHER=$OUT/train/teacher.safetensors
    NOTE="the teacher just trained ($TEACHER): features of a model trained for two short epochs are near chance (10% for 10 classes); no $SHIPPED is shipped"
fi

step "2/5 export: $TEACHER -> $OUT/model.onnx (with the attention output)"
echo "   using $NOTE"
"$BIN/dino-export" --checkpoint "$TEACHER" --to "$OUT/model.onnx" --outputs attention \
    --img-size 32 | sed 's/^/   /'

step "3/5 index: $DATA/train -> $OUT/gallery.dgal"
"$BIN/dino-run" --threads "$THREADS" index --model "$OUT/model.onnx" --images "$DATA/train" \
    --out "$OUT/gallery.dgal" 2>&1 | sed 's/^/   /'

step "4/5 classify: $DATA/test by weighted k-NN (k=20, T=0.07) -> $OUT/predictions.tsv"
mapfile -t TEST < <(find "$DATA/test" -name '*.jpg' | sort)
"$BIN/dino-run" --threads "$THREADS" classify --model "$OUT/model.onnx" \
    --gallery "$OUT/gallery.dgal" --topk 1 "${TEST[@]}" >"$OUT/predictions.tsv"
# Each line: <path>\t<class> <share>; the true class is the image's folder.
awk -F'\t' '{ n++; split($1, p, "/"); split($2, c, " "); if (c[1] == p[length(p) - 1]) hit++ }
    END { if (n == 0) exit 1;
          printf "   top-1 accuracy: %.1f%% (%d of %d test images; chance is 10%%)\n", 100 * hit / n, hit, n }' \
    "$OUT/predictions.tsv"

step "5/5 attention: $DATA/photos/chelsea.png -> $OUT/attention.png"
# The same teacher exported at 128 px (position embedding interpolated) for a finer map.
"$BIN/dino-export" --checkpoint "$TEACHER" --to "$OUT/model-128.onnx" --outputs attention \
    --img-size 128 >/dev/null
"$BIN/dino-run" --threads "$THREADS" attention --model "$OUT/model-128.onnx" \
    "$DATA/photos/chelsea.png" --out "$OUT/attention.png" 2>&1 | sed 's/^/   /'

step "done in $((SECONDS - start))s: files in $OUT/"
echo "   train/ (checkpoint, metrics.jsonl, teacher.safetensors), model.onnx, gallery.dgal,"
echo "   predictions.tsv, attention.png (per-head maps, their mean and the thresholded masks)"
