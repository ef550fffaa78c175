#!/usr/bin/env bash
# Renders the attention picture of the README (docs/attention-chelsea.png) with
# `dino-train attention`: the crop, the mean attention over heads and its thresholded mask.
#
#   scripts/readme_attention.sh [CHECKPOINT [IMG_SIZE]]
#
# CHECKPOINT is a teacher.safetensors or training checkpoint. Without one, a randomly
# initialised ViT-S/16 (timm initialisation, seed 0) is made: it shows the pipeline, not a
# trained model's segmentation. IMG_SIZE (default 480, the official visualisation size for
# ImageNet models) is the shorter side the photo is resized to; the README uses the shipped
# CIFAR teacher (demo/teacher.safetensors) at 64. Needs a release build
# (cargo build --release -p dino-train).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/env.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ckpt="${1:-}"
size="${2:-480}"
if [ -z "$ckpt" ]; then
  ckpt="$work/random-vit_small16.safetensors"
  "$PYTHON" "$here/tests/python/vit_parity.py" create --arch vit_small --patch 16 --seed 0 --out "$ckpt"
fi
"$here/target/release/dino-train" attention --checkpoint "$ckpt" \
  --image "$here/../shared/data/photos/chelsea.png" --img-size "$size" --threshold 0.6 \
  --device cpu --out "$work/out"
"$PYTHON" - "$work/out/chelsea" "$here/docs/attention-chelsea.png" <<'PY'
import sys
from PIL import Image
src, dst = sys.argv[1], sys.argv[2]
tiles = [Image.open(f"{src}/{n}.png").convert("RGB") for n in ("img", "attn-mean", "mask-mean")]
# Small inputs (a CIFAR model at 64 px) are enlarged with visible patches, up to 240 px.
if tiles[0].height < 240:
    f = -(-240 // tiles[0].height)
    tiles = [t.resize((t.width * f, t.height * f), Image.NEAREST) for t in tiles]
w, h = tiles[0].size
gap = 6
out = Image.new("RGB", (3 * w + 2 * gap, h), "white")
for i, t in enumerate(tiles):
    out.paste(t, (i * (w + gap), 0))
# Half size, 256-colour palette: keeps the file small for the README.
out = out.resize((out.width // 2, out.height // 2), Image.LANCZOS).quantize(colors=256)
out.save(dst, optimize=True)
print(dst, out.size)
PY
