"""Pillow's decoded pixels of JPEG files, for the decoder-parity test.

    python pillow_pixels.py OUT.json FILE...

Writes, per file, the width, height and SHA-256 of `Image.open(f).convert("RGB")`'s bytes
(row-major RGB), the pixels the official pipeline (torchvision's default loader) sees.
"""
import hashlib
import json
import sys

from PIL import Image


def main():
    out, files = sys.argv[1], sys.argv[2:]
    rows = {}
    for f in files:
        img = Image.open(f).convert("RGB")
        rows[f] = {"w": img.width, "h": img.height,
                   "sha256": hashlib.sha256(img.tobytes()).hexdigest()}
    with open(out, "w") as fh:
        json.dump({"pillow": Image.__version__ if hasattr(Image, "__version__") else "", "files": rows}, fh)


if __name__ == "__main__":
    main()
