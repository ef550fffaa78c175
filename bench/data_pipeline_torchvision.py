"""torchvision reference for bench/data_pipeline.sh: the official DataAugmentationDINO
(main_dino.py) on PIL images, ImageFolder + DataLoader. Prints one JSON line."""
import argparse
import json
import os
import random
import time

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import datasets, transforms


class GaussianBlur:
    """utils.GaussianBlur of the official code: PIL blur, radius ~ U(0.1, 2.0), with p."""

    def __init__(self, p=0.5, radius_min=0.1, radius_max=2.0):
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img):
        if random.random() > self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


class DataAugmentationDINO:
    def __init__(self, global_size, local_size, n_local, gscale=(0.4, 1.0), lscale=(0.05, 0.4)):
        flip_and_color_jitter = transforms.Compose([
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            transforms.RandomGrayscale(p=0.2),
        ])
        normalize = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])
        rrc = lambda size, scale: transforms.RandomResizedCrop(size, scale=scale, interpolation=Image.BICUBIC)
        self.g1 = transforms.Compose([rrc(global_size, gscale), flip_and_color_jitter, GaussianBlur(1.0), normalize])
        self.g2 = transforms.Compose([rrc(global_size, gscale), flip_and_color_jitter, GaussianBlur(0.1),
                                      Solarization(0.2), normalize])
        self.loc = transforms.Compose([rrc(local_size, lscale), flip_and_color_jitter, GaussianBlur(p=0.5), normalize])
        self.n_local = n_local

    def __call__(self, image):
        return [self.g1(image), self.g2(image)] + [self.loc(image) for _ in range(self.n_local)]


def cpu_seconds(pids):
    """CPU seconds (user + system) of the given processes, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--global", dest="gsize", type=int, default=32)
    ap.add_argument("--local", dest="lsize", type=int, default=16)
    ap.add_argument("--n-local", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1, help="DataLoader workers (1 = in process)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1000)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(a.root, transform=DataAugmentationDINO(a.gsize, a.lsize, a.n_local))
    workers = 0 if a.threads <= 1 else a.threads
    dl = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=workers,
                                     drop_last=True, persistent_workers=workers > 0)
    it = iter(dl)
    next(it)  # warm-up (worker start-up, page cache)
    pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
    done, t, cpu0 = 0, time.perf_counter(), cpu_seconds(pids)
    while done < a.samples:
        for views, _ in it:
            done += views[0].shape[0]
            if done >= a.samples:
                break
        else:
            it = iter(dl)  # next epoch; persistent workers keep their pids
    secs, cpu = time.perf_counter() - t, cpu_seconds(pids) - cpu0
    print(json.dumps({"impl": "torchvision", "threads": max(1, a.threads), "samples": done,
                      "seconds": round(secs, 3), "cpu_seconds": round(cpu, 3),
                      "samples_per_s": round(done / secs, 1)}))


if __name__ == "__main__":
    main()
