"""Fixtures and independent references for the dino-export tests.

The reference is the official DINO `vision_transformer.py` forward pass written out again
in plain PyTorch (pre-norm blocks, softmax(QK^T * scale), erf GELU, final norm, and the
official `interpolate_pos_encoding`: bicubic with scale_factor (w0 + 0.1) / sqrt(N)).

  weights --arch A --patch P [--img-size S] --seed N --out W.safetensors [--kind K] [--eval JSON]
      seeded weights with the official keys, written with the dino-rs metadata
  pth --layout backbone|checkpoint --arch A --patch P --seed N --out F.pth
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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)), attn


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim, heads, hidden, qkv_bias, eps):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads, qkv_bias)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=eps), Mlp(dim, hidden)

    def forward(self, x):
        y, attn = self.attn(self.norm1(x))
        x = x + y
        return x + self.mlp(self.norm2(x)), attn


class PatchEmbed(nn.Module):
    def __init__(self, p, c, d):
        super().__init__()
        self.patch_size = p
        self.proj = nn.Conv2d(c, d, kernel_size=p, stride=p)


class VisionTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, p = cfg["embed_dim"], cfg["patch_size"]
        n = (cfg["img_size"] // p) ** 2
        self.patch_embed = PatchEmbed(p, cfg.get("in_chans", 3), d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, d))
        hidden = int(d * cfg.get("mlp_ratio", 4.0))
        eps = cfg.get("layer_norm_eps", 1e-6)
        self.blocks = nn.ModuleList(
            Block(d, cfg["num_heads"], hidden, cfg.get("qkv_bias", True), eps) for _ in range(cfg["depth"]))
        self.norm = nn.LayerNorm(d, eps=eps)

    def interpolate_pos_encoding(self, x, w, h):
        npatch, N = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        cls, grid = self.pos_embed[:, 0], self.pos_embed[:, 1:]
        dim, p = x.shape[-1], self.patch_embed.patch_size
        w0, h0 = w // p + 0.1, h // p + 0.1
        grid = F.interpolate(
            grid.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
            scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
        return torch.cat((cls.unsqueeze(0), grid.permute(0, 2, 3, 1).view(1, -1, dim)), dim=1)

    def forward(self, x):
        """(normed CLS, normed patch tokens, last block's CLS-to-patch attention)."""
        B, _, w, h = x.shape
        t = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat((self.cls_token.expand(B, -1, -1), t), dim=1)
        t = t + self.interpolate_pos_encoding(t, w, h)
        for blk in self.blocks:
            t, attn = blk(t)
        t = self.norm(t)
        return t[:, 0], t[:, 1:], attn[:, :, 0, 1:]


def preset(arch, patch, img_size):
    d, depth, heads = PRESETS[arch]
    return dict(arch=arch, patch_size=patch, img_size=img_size, in_chans=3, embed_dim=d, depth=depth,
                num_heads=heads, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, layer_norm_eps=1e-6)


def seeded_model(cfg, seed):
    """Weights large enough that attention is far from uniform and every parameter matters."""
    torch.manual_seed(seed)
    m = VisionTransformer(cfg).eval()
    with torch.no_grad():
        for name, t in m.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                t.copy_(1 + 0.2 * torch.randn_like(t))
            elif name.endswith("bias"):
                t.copy_(0.1 * torch.randn_like(t))
            elif name in ("cls_token", "pos_embed"):
                t.copy_(0.5 * torch.randn_like(t))
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn_like(t) / math.sqrt(fan_in))
    return m


def state(m):
    return {k: v.detach().contiguous() for k, v in m.state_dict().items()}


def cmd_weights(a):
    from safetensors.torch import save_file
    cfg = preset(a.arch, a.patch, a.img_size)
    sd = state(seeded_model(cfg, a.seed))
    meta = {"dino_rs.format": "dino-rs/1", "dino_rs.kind": a.kind, "dino_rs.version": "0.1.0",
            "dino_rs.vit": json.dumps(cfg)}
    if a.eval:
        meta["dino_rs.eval"] = a.eval
    if a.kind == "training_checkpoint":
        # The student differs, so that exporting it by mistake shows.
        sd = {f"{who}.backbone.{k}": v + (who == "student") for k, v in sd.items() for who in ("teacher", "student")}
    save_file(sd, a.out, metadata=meta)


def cmd_pth(a):
    cfg = preset(a.arch, a.patch, a.img_size)
    sd = state(seeded_model(cfg, a.seed))
    # A non-contiguous view and a half-precision tensor exercise the reader's stride and
    # dtype handling: the bytes on disk differ, the values must not.
    sd["pos_embed"] = sd["pos_embed"].transpose(1, 2).contiguous().transpose(1, 2)
    sd["norm.weight"] = sd["norm.weight"].half()
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
    return preset(arch, p, int(math.sqrt(sd["pos_embed"].shape[1] - 1)) * p), sd


def images(folder, size):
    from PIL import Image
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
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
    m = VisionTransformer(cfg).eval()
    m.load_state_dict(sd, strict=True)
    x = images(a.images, a.img_size)
    with torch.no_grad():
        emb, patches, attn = (t.contiguous().numpy() for t in m(torch.from_numpy(x)))
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
    for s in (w, p):
        s.add_argument("--arch", required=True)
        s.add_argument("--patch", type=int, required=True)
        s.add_argument("--img-size", type=int, default=224)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--out", required=True)
    w.add_argument("--kind", default="backbone")
    w.add_argument("--eval")
    p.add_argument("--layout", choices=["backbone", "checkpoint"], required=True)
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
