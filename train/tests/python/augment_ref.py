"""Reference outputs of torchvision's PIL augmentation ops for the Rust parity tests.

Usage: augment_ref.py <image> <out_dir>
Writes raw little-endian arrays (uint8 HWC or float32 CHW) and manifest.json describing
each case; every random choice is fixed here so the outputs are deterministic.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter, ImageOps
from torchvision.transforms import InterpolationMode

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
from dino_ref.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

IMAGENET = (IMAGENET_MEAN, IMAGENET_STD)
CIFAR = (CIFAR_MEAN, CIFAR_STD)


def f32(x):
    """A float32-representable Python float, as torchvision's sampled factors are."""
    return float(np.float32(x))


def main(src, out):
    os.makedirs(out, exist_ok=True)
    img = Image.open(src).convert("RGB")
    small = img.crop((100, 50, 100 + 80, 50 + 60))  # 80 x 60 region for the slower cases
    cases = []

    def save(name, arr, **meta):
        arr = np.ascontiguousarray(arr)
        arr.tofile(os.path.join(out, name + ".bin"))
        cases.append({"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape), **meta})

    save("input", np.asarray(img))
    save("small", np.asarray(small))
    for b in (0.6, 0.87, 1.0, 1.37):
        save(f"brightness_{b}", np.asarray(F.adjust_brightness(img, f32(b))), op="brightness", factor=f32(b))
    for c in (0.6, 0.93, 1.4):
        save(f"contrast_{c}", np.asarray(F.adjust_contrast(img, f32(c))), op="contrast", factor=f32(c))
    for s in (0.8, 1.2):
        save(f"saturation_{s}", np.asarray(F.adjust_saturation(img, f32(s))), op="saturation", factor=f32(s))
    for h in (-0.1, -0.037, 0.05, 0.1):
        save(f"hue_{h}", np.asarray(F.adjust_hue(img, f32(h))), op="hue", factor=f32(h))
    # A colour grid (every R, G; B in steps of 5) for the per-pixel float paths.
    r, g, b = np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 5), indexing="ij")
    grid = np.stack([r, g, b], -1).reshape(256 * 4, -1, 3).astype(np.uint8)
    save("grid", grid)
    grid_img = Image.fromarray(grid, "RGB")
    for h in (-0.1, 0.0713):
        save(f"grid_hue_{h}", np.asarray(F.adjust_hue(grid_img, f32(h))), op="hue", factor=f32(h), src="grid")
    save("grid_saturation", np.asarray(F.adjust_saturation(grid_img, f32(1.17))), op="saturation",
         factor=f32(1.17), src="grid")
    save("grayscale", np.asarray(F.rgb_to_grayscale(img, num_output_channels=3)), op="grayscale")
    save("solarize", np.asarray(ImageOps.solarize(img, 128)), op="solarize")
    for sigma in (0.1, 0.5, 1.3, 2.0):
        blurred = small.filter(ImageFilter.GaussianBlur(radius=f32(sigma)))
        save(f"blur_{sigma}", np.asarray(blurred), op="blur", factor=f32(sigma), src="small")
    for tag, (mean, std) in (("imagenet", IMAGENET), ("cifar", CIFAR)):
        t = F.normalize(F.to_tensor(img), mean, std)
        save(f"normalize_{tag}", t.numpy(), op="normalize", mean=mean, std=std)
    # (top, left, height, width) -> size: down- and up-scaling, square and not.
    boxes = [((10, 20, 200, 180), 224), ((0, 0, 300, 451), 96), ((50, 60, 150, 120), 96),
             ((5, 7, 20, 25), 32), ((3, 4, 26, 26), 16), ((0, 0, 300, 300), 224)]
    for (i, j, h, w), size in boxes:
        r = F.resized_crop(img, i, j, h, w, [size, size], InterpolationMode.BICUBIC, antialias=True)
        save(f"crop_{i}_{j}_{h}_{w}_{size}", np.asarray(r), op="resized_crop", box=[i, j, h, w], size=size)
    # Whole views with every photometric step fixed: composition and order.
    views = [
        dict(box=[20, 30, 250, 260], size=224, flip=True, order=[3, 1, 0, 2], b=1.21, c=0.73,
             s=1.13, h=-0.061, gray=False, sigma=1.7, solarize=False),
        dict(box=[100, 150, 120, 110], size=96, flip=False, order=[0, 2, 1, 3], b=0.69, c=1.33,
             s=0.85, h=0.083, gray=True, sigma=None, solarize=True),
        dict(box=[0, 0, 300, 451], size=96, flip=True, order=None, gray=False, sigma=0.4, solarize=False),
    ]
    for k, v in enumerate(views):
        i, j, h, w = v["box"]
        x = F.resized_crop(img, i, j, h, w, [v["size"]] * 2, InterpolationMode.BICUBIC, antialias=True)
        if v["flip"]:
            x = F.hflip(x)
        if v["order"] is not None:
            for key in ("b", "c", "s", "h"):
                v[key] = f32(v[key])
            fns = [lambda im: F.adjust_brightness(im, v["b"]), lambda im: F.adjust_contrast(im, v["c"]),
                   lambda im: F.adjust_saturation(im, v["s"]), lambda im: F.adjust_hue(im, v["h"])]
            for o in v["order"]:
                x = fns[o](x)
        if v["gray"]:
            x = F.rgb_to_grayscale(x, num_output_channels=3)
        if v["sigma"] is not None:
            v["sigma"] = f32(v["sigma"])
            x = x.filter(ImageFilter.GaussianBlur(radius=v["sigma"]))
        if v["solarize"]:
            x = ImageOps.solarize(x, 128)
        t = F.normalize(F.to_tensor(x), *IMAGENET)
        save(f"view_{k}", t.numpy(), op="view", **v)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    torch.manual_seed(0)
    main(sys.argv[1], sys.argv[2])
