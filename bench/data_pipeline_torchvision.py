"""torchvision reference for bench/data_pipeline.sh: the official DataAugmentationDINO
(main_dino.py, as `dino_ref.transforms` writes it) on PIL images, ImageFolder + DataLoader.
Prints one JSON line."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torchvision import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from dino_ref.transforms import DataAugmentationDINO  # noqa: E402


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
