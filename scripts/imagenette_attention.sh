#!/usr/bin/env bash
# Renders docs/attention-imagenette.png: the last-block attention of an Imagenette teacher on
# validation photos of eight classes, one row per photo: the crop the model saw, the mean
# attention over heads, its thresholded mask (60% of the mass), then each head's map.
#
#   scripts/imagenette_attention.sh [CHECKPOINT [IMG_SIZE]]
#
# CHECKPOINT defaults to the shipped demo/imagenette-teacher.safetensors; IMG_SIZE (default
# 128: twice the 64 px global crops it was trained on, 16 x 16 patches of 8 px) is the
# shorter side the photos are resized to. The photos are not chosen by how they look: each
# row is the first validation image (by file name) of its class. Needs a release build.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$here/scripts/env.sh"
ckpt="${1:-$here/demo/imagenette-teacher.safetensors}"
size="${2:-128}"
val="$here/../shared/data/imagenette-160/val"
out="${OUT:-$here/docs/attention-imagenette.png}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# WordNet ids of Imagenette's classes, in the order of the rows.
classes=(n03888257:parachute n03445777:golf_ball n03028079:church n03417042:garbage_truck
         n03394916:French_horn n01440764:tench n02102040:springer n03425413:gas_pump)
mkdir -p "$work/in"
for c in "${classes[@]}"; do
    first=$(find "$val/${c%%:*}" -maxdepth 1 \( -iname '*.jpg' -o -iname '*.jpeg' \) | sort | head -n 1)
    [ -n "$first" ] || { echo "error: no image in $val/${c%%:*}" >&2; exit 2; }
    cp "$first" "$work/in/${c##*:}.jpg"
done
"$here/target/release/dino-train" attention --quiet --checkpoint "$ckpt" --image "$work/in" \
    --img-size "$size" --threshold 0.6 --device cpu --out "$work/attn"
names=()
for c in "${classes[@]}"; do names+=("${c##*:}"); done
"$PYTHON" - "$work/attn" "$out" "${names[@]}" <<'PY'
import sys
from pathlib import Path
from PIL import Image, ImageDraw

src, dst, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
rows = []
for name in names:
    d = src / name
    heads = sorted(d.glob("attn-head*.png"), key=lambda p: int(p.stem[len("attn-head"):]))
    tiles = [Image.open(d / f).convert("RGB") for f in ("img.png", "attn-mean.png", "mask-mean.png")]
    tiles += [Image.open(p).convert("RGB") for p in heads]
    rows.append((name.replace("_", " "), tiles))
w, h = rows[0][1][0].size
gap, label = 4, 16
cols = max(len(t) for _, t in rows)
out = Image.new("RGB", (cols * (w + gap) - gap, len(rows) * (h + label + gap)), "white")
draw = ImageDraw.Draw(out)
for r, (name, tiles) in enumerate(rows):
    y = r * (h + label + gap)
    draw.text((2, y + 2), name, fill="black")
    for c, t in enumerate(tiles):
        out.paste(t.resize((w, h)), (c * (w + gap), y + label))
out.quantize(colors=256).save(dst, optimize=True)
print(dst, out.size)
PY
