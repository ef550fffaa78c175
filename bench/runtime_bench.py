"""dino-run against Python onnxruntime and PyTorch eager, side by side in one run.

    python bench/runtime_bench.py [--threads 2] [--images 128] [--repeat 5] [--out DIR]

Builds a seeded ViT-S/16 at 224 (tests/python/runtime_fixture.py), then measures with the
same thread count:
  * throughput, batch 32, end to end (decode, eval transform, inference) over N images
    (the photos of ../shared/data/photos repeated), session creation excluded: Python
    times its loop; dino-run is timed as wall(N + 32 images) - wall(32 images);
  * cold start: process start to the first embedding of one JPEG (wall time, median);
  * peak RSS of the N-image run (getrusage of the child);
  * PyTorch eager throughput on the same preprocessed batches.
The k-NN figure (one query against 50,000 rows) comes from
`cargo run --release -p dino-runtime --example knn_bench`.

Worker modes (used by the driver): `ort MODEL THREADS BATCH IMAGE...`,
`torch THREADS BATCH IMAGE...`.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def preprocess(path, ev):
    """The eval transform with PIL and numpy only (no torch import, as a deployment would)."""
    import numpy as np
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = ev["resize_size"]
    if w <= h:
        size = (s, int(s * h / w))
    else:
        size = (int(s * w / h), s)
    im = im.resize(size, Image.BICUBIC)
    c = ev["crop_size"]
    left = int(round((size[0] - c) / 2.0))
    top = int(round((size[1] - c) / 2.0))
    a = np.asarray(im.crop((left, top, left + c, top + c)), dtype=np.float32) / 255.0
    a = (a - np.array(ev["mean"], dtype=np.float32)) / np.array(ev["std"], dtype=np.float32)
    return a.transpose(2, 0, 1)


def worker_ort(model, threads, batch, images):
    t0 = time.perf_counter()
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    ev = json.loads(sess.get_modelmeta().custom_metadata_map["dino_rs.eval"])
    t1 = time.perf_counter()
    first = None
    for i in range(0, len(images), batch):
        x = np.stack([preprocess(p, ev) for p in images[i:i + batch]])
        emb = sess.run(["embedding"], {"image": x})[0]
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        if first is None:
            first = time.perf_counter()
    t2 = time.perf_counter()
    print(json.dumps({"session_s": t1 - t0, "loop_s": t2 - t1, "first_s": first - t0,
                      "images_per_s": len(images) / (t2 - t1)}))


def worker_torch(threads, batch, images):
    import numpy as np
    import torch

    from dino_ref.vit import VisionTransformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = VisionTransformer(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6).eval()
    ev = {"resize_size": 256, "crop_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    t1 = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack([preprocess(p, ev) for p in images[i:i + batch]]))
            torch.nn.functional.normalize(model(x), dim=1)
    t2 = time.perf_counter()
    print(json.dumps({"loop_s": t2 - t1, "images_per_s": len(images) / (t2 - t1)}))


def run_rss(cmd, env=None):
    """Runs a child and returns (wall, peak RSS MiB, stdout) from its own rusage."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"{cmd[:3]} failed with status {status}")
    return wall, ru.ru_maxrss / 1024.0, out.decode()


def main():
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(ROOT, "target", "bench-runtime"))
    ap.add_argument("--photos", default=os.path.join(ROOT, "..", "shared", "data", "photos"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    py, T = sys.executable, str(a.threads)
    model = os.path.join(a.out, "vit_small16.onnx")
    if not os.path.exists(model):
        subprocess.run([py, os.path.join(ROOT, "tests/python/runtime_fixture.py"), model, "--img", "224",
                        "--patch", "16", "--dim", "384", "--depth", "12", "--heads", "6",
                        "--arch", "vit_small", "--no-attention"], check=True)
    photos_dir = a.photos
    photos = sorted(os.path.join(photos_dir, f) for f in os.listdir(photos_dir))
    images = (photos * (a.images // len(photos) + 1))[:a.images]
    jpeg = os.path.join(photos_dir, "rocket.jpg")
    dino = os.path.join(ROOT, "target", "release", "dino-run")
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(a.out, "cache"))
    me = os.path.abspath(__file__)
    rs = [dino, "--threads", T, "embed", "--batch-size", "32", "--model", model]
    run_rss(rs + [jpeg], env)  # writes the optimised-graph cache

    res = {k: [] for k in ["rs_tp", "py_tp", "pt_tp", "rs_cold", "rs_cold_nocache", "py_cold",
                           "py_session", "rs_rss", "py_rss", "pt_rss", "rs_cold_rss", "py_cold_rss"]}
    for _ in range(a.repeat):
        w32, _, _ = run_rss(rs + images[:32], env)
        wn, rss, _ = run_rss(rs + images[:32] + images, env)
        res["rs_tp"].append(a.images / (wn - w32))
        _, rss, _ = run_rss(rs + images, env)
        res["rs_rss"].append(rss)
        _, rss, out = run_rss([py, me, "ort", model, T, "32"] + images)
        res["py_tp"].append(json.loads(out)["images_per_s"])
        res["py_rss"].append(rss)
        _, rss, out = run_rss([py, me, "torch", T, "32"] + images)
        res["pt_tp"].append(json.loads(out)["images_per_s"])
        res["pt_rss"].append(rss)
        w, rss, _ = run_rss(rs + [jpeg], env)
        res["rs_cold"].append(w)
        res["rs_cold_rss"].append(rss)
        res["rs_cold_nocache"].append(run_rss(rs[:3] + ["--no-cache"] + rs[3:] + [jpeg], env)[0])
        w, rss, out = run_rss([py, me, "ort", model, T, "1", jpeg])
        res["py_cold"].append(w)
        res["py_cold_rss"].append(rss)
        res["py_session"].append(json.loads(out)["session_s"])
    med = {k: statistics.median(v) for k, v in res.items()}
    size = os.path.getsize(dino) / 2**20
    print(json.dumps({"median": med, "all": res, "binary_mib": size}, indent=1))
    print(f"\nViT-S/16 @224, {a.threads} threads, {a.images} images, batch 32, median of {a.repeat}")
    print("| | dino-run | Python onnxruntime | PyTorch eager | ratio |")
    print("|---|---|---|---|---|")
    print(f"| throughput (img/s) | {med['rs_tp']:.1f} | {med['py_tp']:.1f} | {med['pt_tp']:.1f} | "
          f"{med['rs_tp'] / med['py_tp']:.2f}x |")
    print(f"| cold start, one JPEG (s) | {med['rs_cold']:.3f} (no cache {med['rs_cold_nocache']:.3f}) | "
          f"{med['py_cold']:.3f} (session {med['py_session']:.3f}) | | {med['rs_cold'] / med['py_cold']:.2f}x |")
    print(f"| peak RSS, {a.images} images (MiB) | {med['rs_rss']:.0f} | {med['py_rss']:.0f} | "
          f"{med['pt_rss']:.0f} | {med['rs_rss'] / med['py_rss']:.2f}x |")
    print(f"| peak RSS, one JPEG (MiB) | {med['rs_cold_rss']:.0f} | {med['py_cold_rss']:.0f} | | "
          f"{med['rs_cold_rss'] / med['py_cold_rss']:.2f}x |")
    print(f"| release binary | {size:.2f} MiB | | | |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "ort":
        worker_ort(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
    elif len(sys.argv) > 1 and sys.argv[1] == "torch":
        worker_torch(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        main()
