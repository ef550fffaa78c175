"""Reference class scores of a linear probe over a backbone, for the `export_linear` tests.

The features are those `eval_linear.py` (Caron et al., 2021) feeds its `LinearClassifier`,
computed here from `dino_ref.vit` blocks: the last `n_last_blocks` outputs of
`get_intermediate_layers` (each through the final norm), their CLS tokens concatenated in
block order, and with `avgpool_patchtokens` the official pairing of that vector with the
mean of the last block's patch tokens along a new last axis, flattened (CLS value j, then
patch-mean value j). Then `x W^T + b`.

  compare --weights W.safetensors --head linear.safetensors --onnx M.onnx [--onnx-fp16 M16.onnx]
          --images DIR --img-size S --out DIR
      the reference and ONNX Runtime on one batch of images (export_ref.py's preprocessing);
      writes raw float32 files and manifest.json in export_ref.py's layout.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from dino_ref.vit import VisionTransformer  # noqa: E402
from export_ref import images, load_weights  # noqa: E402


def intermediate_layers(vit, x, n):
    """The normed tokens of the last `n` blocks, as the official `get_intermediate_layers`."""
    x = vit.prepare_tokens(x)
    out = []
    for i, blk in enumerate(vit.blocks):
        x, _ = blk(x)
        if len(vit.blocks) - i <= n:
            out.append(vit.norm(x))
    return out


def features(vit, x, n, avgpool):
    layers = intermediate_layers(vit, x, n)
    out = torch.cat([t[:, 0] for t in layers], dim=-1)
    if avgpool:
        mean = torch.mean(layers[-1][:, 1:], dim=1)
        out = torch.cat((out.unsqueeze(-1), mean.unsqueeze(-1)), dim=-1)
        out = out.reshape(out.shape[0], -1)
    return out


def read_head(path):
    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(path, "pt") as f:
        cfg = json.loads(f.metadata()["dino_rs.linear"])
    t = load_file(path)
    return cfg, t["linear.weight"], t["linear.bias"]


def cmd_compare(a):
    import onnxruntime as ort
    vcfg, sd = load_weights(a.weights, "teacher")
    vit = VisionTransformer.from_config(vcfg).eval()
    vit.load_state_dict(sd, strict=True)
    hcfg, w, b = read_head(a.head)
    x = images(a.images, a.img_size)
    with torch.no_grad():
        f = features(vit, torch.from_numpy(x), hcfg["n_last_blocks"], hcfg["avgpool_patchtokens"])
        assert f.shape[1] == w.shape[1], (f.shape, w.shape)
        ref = {"logits": torch.nn.functional.linear(f, w, b).numpy(), "embedding": vit(torch.from_numpy(x)).numpy()}
    os.makedirs(a.out, exist_ok=True)
    manifest = {"batch": int(x.shape[0]), "classes": hcfg["classes"]}
    for tag, path in (("ort", a.onnx), ("ort_fp16", a.onnx_fp16)):
        if not path:
            continue
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(names, {"image": x})))
        for name, want in ref.items():
            got = outs[name]
            assert got.shape == want.shape and got.dtype == np.float32, (name, got.shape, want.shape)
            want.astype("<f4").tofile(os.path.join(a.out, f"{name}.ref.f32"))
            got.astype("<f4").tofile(os.path.join(a.out, f"{name}.{tag}.f32"))
            manifest.setdefault(name, {"shape": list(want.shape), "ref": f"{name}.ref.f32"})[tag] = f"{name}.{tag}.f32"
    with open(os.path.join(a.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    for arg in ("--weights", "--head", "--onnx", "--images", "--out"):
        c.add_argument(arg, required=True)
    c.add_argument("--onnx-fp16")
    c.add_argument("--img-size", type=int, required=True)
    a = ap.parse_args()
    {"compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
