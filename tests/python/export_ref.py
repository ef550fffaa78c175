"""Fixtures and independent references for the dino-export tests.

The reference is `dino_ref.vit`, the official DINO `vision_transformer.py` written out again
in plain PyTorch (pre-norm blocks, softmax(QK^T * scale), erf GELU, final norm, and the
official `interpolate_pos_encoding`: bicubic with scale_factor (w0 + 0.1) / sqrt(N)).

  weights --arch A --patch P [--img-size S] --seed N --out W.safetensors [--kind K] [--eval JSON]
      seeded weights with the official keys, written with the dino-rs metadata; with several
      patch sizes (--patch 4 8 16), --out names each file with {patch}
  pth --layout backbone|checkpoint --arch A --patch P --seed N --out F.pth [--half]
      the same kind of weights saved with torch.save in the official layouts
  check MODEL.onnx...
      onnx.checker.check_model(full_check=True) on each file
  compare --weights W(.safetensors|.pth) --onnx M.onnx --images DIR --img-size S --out DIR
      the reference and ONNX Runtime on one batch of real images; writes raw float32
      files and manifest.json for the Rust test to compare
"""
import argparse
import collections
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from dino_ref.fixtures import seeded_vit, state, vit_config  # noqa: E402
from dino_ref.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dino_ref.vit import PRESETS, VisionTransformer  # noqa: E402


def cmd_weights(a):
    # Several patch sizes in one call: `--out` then names each file with `{patch}`.
    for patch in a.patch:
        one = argparse.Namespace(**vars(a))
        one.patch, one.out = patch, a.out.format(patch=patch)
        weights_one(one)


def weights_one(a):
    from safetensors.torch import save_file
    cfg = vit_config(a.arch, a.patch, a.img_size)
    sd = state(seeded_vit(cfg, a.seed))
    meta = {"dino_rs.format": "dino-rs/1", "dino_rs.kind": a.kind, "dino_rs.version": "0.1.0",
            "dino_rs.vit": json.dumps(cfg)}
    if a.eval:
        meta["dino_rs.eval"] = a.eval
    if a.kind == "training_checkpoint":
        # The student differs, so that exporting it by mistake shows.
        sd = {f"{who}.backbone.{k}": v + (who == "student") for k, v in sd.items() for who in ("teacher", "student")}
    save_file(sd, a.out, metadata=meta)


def cmd_pth(a):
    cfg = vit_config(a.arch, a.patch, a.img_size)
    sd = state(seeded_vit(cfg, a.seed))
    # A non-contiguous view and a half-precision tensor exercise the reader's stride and
    # dtype handling: the bytes on disk differ, the values must not.
    sd["pos_embed"] = sd["pos_embed"].transpose(1, 2).contiguous().transpose(1, 2)
    sd["norm.weight"] = sd["norm.weight"].half()
    if a.half:
        sd = collections.OrderedDict((k, v.half()) for k, v in sd.items())
    if a.layout == "backbone":
        obj = collections.OrderedDict(sd)
    else:
        head = {"mlp.0.weight": torch.randn(64, cfg["embed_dim"]), "mlp.0.bias": torch.zeros(64),
                "last_layer.weight_g": torch.ones(100, 1), "last_layer.weight_v": torch.randn(100, 64)}
        teacher = collections.OrderedDict([(f"backbone.{k}", v) for k, v in sd.items()]
                                          + [(f"head.{k}", v) for k, v in head.items()])
        student = collections.OrderedDict((f"module.{k}", v.clone() + 1) for k, v in teacher.items())
        params = list(student.values())
        opt = torch.optim.AdamW([torch.nn.Parameter(p.clone()) for p in params[:3]])
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.step()
        obj = {"student": student, "teacher": teacher, "optimizer": opt.state_dict(), "epoch": 7,
               "args": argparse.Namespace(arch=a.arch, patch_size=a.patch, lr=0.0005, out_dim=100),
               "dino_loss": {"center": torch.zeros(1, 100)}, "fp16_scaler": None}
    torch.save(obj, a.out)


def cmd_check(a):
    import onnx
    for path in a.models:
        onnx.checker.check_model(path, full_check=True)
        print(f"checked {os.path.basename(path)}: full_check ok")


def load_weights(path, key):
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        sd = load_file(path)
        if meta["dino_rs.kind"] == "training_checkpoint":
            pre = "teacher.backbone."
            sd = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
        return json.loads(meta["dino_rs.vit"]), sd
    obj = torch.load(path, map_location="cpu", weights_only=False)
    sd = obj[key] if key in obj else obj
    # The official loader's normalisation (eval_knn.py / utils.load_pretrained_weights).
    sd = {k.replace("module.", "").replace("backbone.", ""): v for k, v in sd.items()}
    sd = {k: v.float() for k, v in sd.items() if not k.startswith("head.")}
    d, p = sd["cls_token"].shape[-1], sd["patch_embed.proj.weight"].shape[-1]
    arch = next(k for k, v in PRESETS.items() if v[0] == d)
    return vit_config(arch, p, int(math.sqrt(sd["pos_embed"].shape[1] - 1)) * p), sd


def images(folder, size):
    from PIL import Image
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    out = []
    for name in sorted(os.listdir(folder)):
        img = Image.open(os.path.join(folder, name)).convert("RGB")
        s = size / min(img.size)
        img = img.resize((max(size, round(img.width * s)), max(size, round(img.height * s))), Image.BICUBIC)
        left, top = (img.width - size) // 2, (img.height - size) // 2
        x = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float64) / 255.0
        out.append(((x - mean) / std).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def cmd_compare(a):
    import onnxruntime as ort
    cfg, sd = load_weights(a.weights, a.key)
    m = VisionTransformer.from_config(cfg).eval()
    m.load_state_dict(sd, strict=True)
    x = images(a.images, a.img_size)
    with torch.no_grad():
        emb, patches, attn = (t.contiguous().numpy() for t in m.forward_all(torch.from_numpy(x)))
    ref = {"embedding": emb, "patch_tokens": patches, "attention": attn}
    os.makedirs(a.out, exist_ok=True)
    x.astype("<f4").tofile(os.path.join(a.out, "input.f32"))
    manifest = {"batch": int(x.shape[0]), "input": {"shape": list(x.shape), "ref": "input.f32"}}
    for tag, path in (("ort", a.onnx), ("ort_fp16", a.onnx_fp16)):
        if not path:
            continue
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, {"image": x})
        for name, got in zip(names, outs):
            want = ref[name]
            assert got.shape == want.shape and got.dtype == np.float32, (name, got.shape, got.dtype, want.shape)
            want.astype("<f4").tofile(os.path.join(a.out, f"{name}.ref.f32"))
            got.astype("<f4").tofile(os.path.join(a.out, f"{name}.{tag}.f32"))
            manifest.setdefault(name, {"shape": list(want.shape)})[tag] = f"{name}.{tag}.f32"
            manifest[name]["ref"] = f"{name}.ref.f32"
    with open(os.path.join(a.out, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    p = sub.add_parser("pth")
    w.add_argument("--patch", type=int, nargs="+", required=True)
    p.add_argument("--patch", type=int, required=True)
    for s in (w, p):
        s.add_argument("--arch", required=True)
        s.add_argument("--img-size", type=int, default=224)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out", required=True)
    w.add_argument("--kind", default="backbone")
    w.add_argument("--eval")
    p.add_argument("--layout", choices=["backbone", "checkpoint"], required=True)
    p.add_argument("--half", action="store_true", help="every weight in float16 (smaller files)")
    c = sub.add_parser("check")
    c.add_argument("models", nargs="+")
    r = sub.add_parser("compare")
    r.add_argument("--weights", required=True)
    r.add_argument("--key", default="teacher")
    r.add_argument("--onnx", required=True)
    r.add_argument("--onnx-fp16")
    r.add_argument("--images", required=True)
    r.add_argument("--img-size", type=int, required=True)
    r.add_argument("--out", required=True)
    a = ap.parse_args()
    {"weights": cmd_weights, "pth": cmd_pth, "check": cmd_check, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
