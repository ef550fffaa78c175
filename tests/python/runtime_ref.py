"""Independent Python references for the dino-run and dino-core tests.

    python runtime_ref.py embed MODEL.onnx OUT.json IMAGE...
        PIL + torchvision eval transform (`dino_ref.transforms`, settings from the model's
        metadata) + onnxruntime;
        writes {"<image>": [embedding...]} (raw model output).
    python runtime_ref.py preprocess RESIZE CROP OUT_DIR IMAGE...
        torchvision Resize(BICUBIC)/CenterCrop/ToTensor/Normalize(ImageNet) of each image,
        written as OUT_DIR/<index>.f32 (little-endian CHW float32).
    python runtime_ref.py resize OUT_DIR
        seeded random RGB images and their PIL bicubic resizes, as PNGs plus manifest.json.
    python runtime_ref.py knn OUT.json
        seeded features and the official eval_knn.py weighted vote, inputs and results.
"""

import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))


def embed(model_path, out, images):
    import onnxruntime as ort
    import torch
    from dino_ref.transforms import eval_transform

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    ev = json.loads(meta["dino_rs.eval"])
    tf = eval_transform(ev["resize_size"], ev["crop_size"], ev["mean"], ev["std"])
    batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in images]).numpy()
    if sess.get_inputs()[0].type == "tensor(float16)":
        batch = batch.astype(np.float16)
    (emb,) = sess.run(["embedding"], {"image": batch})
    with open(out, "w") as f:
        json.dump({p: e.astype(np.float32).tolist() for p, e in zip(images, emb)}, f)


def preprocess(resize, crop, out_dir, images):
    from dino_ref.transforms import eval_transform

    tf = eval_transform(int(resize), int(crop))
    for i, p in enumerate(images):
        t = tf(Image.open(p).convert("RGB")).numpy().astype("<f4")
        t.tofile(os.path.join(out_dir, f"{i}.f32"))


def resize(out_dir):
    rng = np.random.default_rng(0)
    cases = [((97, 61), (40, 25)), ((61, 97), (256, 409)), ((300, 200), (77, 51)),
             ((50, 50), (50, 17)), ((33, 80), (33, 200)), ((512, 384), (341, 256))]
    manifest = []
    for i, (src, dst) in enumerate(cases):
        # Smooth structure plus noise, so both filters and clipping are exercised.
        yy, xx = np.mgrid[0:src[1], 0:src[0]]
        base = 127 + 120 * np.sin(xx[..., None] / 7.0 + np.array([0, 1, 2])) * np.cos(yy[..., None] / 5.0)
        img = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        im = Image.fromarray(img, "RGB")
        im.save(os.path.join(out_dir, f"src{i}.png"))
        im.resize(dst, Image.BICUBIC).save(os.path.join(out_dir, f"dst{i}.png"))
        manifest.append({"src": f"src{i}.png", "dst": f"dst{i}.png", "size": list(dst)})
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def knn(out):
    """`knn_classifier` of facebookresearch/dino eval_knn.py, restated."""
    import torch

    g = torch.Generator().manual_seed(0)
    num_classes, dim, n_train, n_test, k, T = 13, 32, 700, 150, 20, 0.07
    centers = torch.randn(num_classes, dim, generator=g)
    train_labels = torch.randint(0, num_classes, (n_train,), generator=g)
    test_labels = torch.randint(0, num_classes, (n_test,), generator=g)
    train = centers[train_labels] + 1.5 * torch.randn(n_train, dim, generator=g)
    test = centers[test_labels] + 1.5 * torch.randn(n_test, dim, generator=g)
    train = torch.nn.functional.normalize(train, dim=1, p=2)
    test = torch.nn.functional.normalize(test, dim=1, p=2)

    similarity = torch.mm(test, train.t())
    distances, indices = similarity.topk(k, largest=True, sorted=True)
    retrieved = torch.gather(train_labels.view(1, -1).expand(n_test, -1), 1, indices)
    one_hot = torch.zeros(n_test * k, num_classes)
    one_hot.scatter_(1, retrieved.view(-1, 1), 1)
    weights = distances.clone().div_(T).exp_()
    probs = torch.sum(one_hot.view(n_test, -1, num_classes) * weights.view(n_test, -1, 1), 1)
    _, predictions = probs.sort(1, True)
    correct = predictions.eq(test_labels.view(-1, 1))
    top1 = correct.narrow(1, 0, 1).sum().item() * 100.0 / n_test
    top5 = correct.narrow(1, 0, min(5, k)).sum().item() * 100.0 / n_test
    with open(out, "w") as f:
        json.dump({
            "num_classes": num_classes, "dim": dim, "k": k, "temperature": T,
            "train": train.flatten().tolist(), "train_labels": train_labels.tolist(),
            "test": test.flatten().tolist(), "test_labels": test_labels.tolist(),
            "scores": probs.flatten().tolist(), "top1": top1, "top5": top5,
        }, f)


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "embed":
        embed(rest[0], rest[1], rest[2:])
    elif cmd == "preprocess":
        preprocess(rest[0], rest[1], rest[2], rest[3:])
    elif cmd == "resize":
        resize(rest[0])
    elif cmd == "knn":
        knn(rest[0])
    else:
        sys.exit(f"unknown command {cmd}")
