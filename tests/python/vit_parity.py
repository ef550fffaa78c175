"""Independent references for the dino-models ViT: timm's VisionTransformer, plus the
official DINO `interpolate_pos_encoding` (`dino_ref.vit`) and an explicit
softmax(QK^T/sqrt(d)) attention.

  create  --arch vit_tiny --patch 16 --seed 0 --out W.safetensors
      a timm-initialised backbone saved with the official keys and dino-rs metadata
  forward --weights W.safetensors --input X.safetensors --out O.safetensors
      loads W into timm (strict) and writes `cls` (timm forward at the native size, the
      official formula otherwise) and `attn` (last block, explicit softmax)
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from dino_ref.fixtures import timm_vit, vit_config  # noqa: E402
from dino_ref.vit import interpolate_pos_encoding  # noqa: E402


def tokens(m, x, patch):
    B, _, w, h = x.shape
    t = m.patch_embed.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat((m.cls_token.expand(B, -1, -1), t), dim=1)
    return t + interpolate_pos_encoding(m.pos_embed, t.shape[1] - 1, w, h, patch)


def explicit_attention(blk, t):
    B, N, C = t.shape
    heads = blk.attn.num_heads
    qkv = blk.attn.qkv(blk.norm1(t)).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(C // heads), dim=-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["create", "forward"])
    ap.add_argument("--arch", default="vit_tiny")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights")
    ap.add_argument("--input")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)

    if a.mode == "create":
        cfg = vit_config(a.arch, a.patch, a.img_size)
        m = timm_vit(cfg)
        # timm zero-inits some tensors; randomise all so every weight is exercised.
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        meta = {"dino_rs.format": "dino-rs/1", "dino_rs.kind": "backbone",
                "dino_rs.version": "reference", "dino_rs.vit": json.dumps(cfg)}
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, a.out, metadata=meta)
        return

    with safe_open(a.weights, "pt") as f:
        cfg = json.loads(f.metadata()["dino_rs.vit"])
    m = timm_vit(cfg)
    missing, unexpected = m.load_state_dict(load_file(a.weights), strict=True)
    x = load_file(a.input)["image"]
    with torch.no_grad():
        native = x.shape[-1] == cfg["img_size"] and x.shape[-2] == cfg["img_size"]
        cls = m(x) if native else None
        t = tokens(m, x, cfg["patch_size"])
        for blk in m.blocks[:-1]:
            t = blk(t)
        attn = explicit_attention(m.blocks[-1], t)
        official = m.norm(m.blocks[-1](t))[:, 0]
        if cls is None:
            cls = official
        else:
            # timm's own pipeline and the official formula agree at the native size.
            assert torch.allclose(cls, official, atol=1e-5), (cls - official).abs().max()
    save_file({"cls": cls.contiguous(), "attn": attn.contiguous()}, a.out)


if __name__ == "__main__":
    main()
