"""Independent references for the dino-models ViT: timm's VisionTransformer, plus the
official DINO `interpolate_pos_encoding` and an explicit softmax(QK^T/sqrt(d)) attention.

  create  --arch vit_tiny --patch 16 --seed 0 --out W.safetensors
      a timm-initialised backbone saved with the official keys and dino-rs metadata
  forward --weights W.safetensors --input X.safetensors --out O.safetensors
      loads W into timm (strict) and writes `cls` (timm forward at the native size, the
      official formula otherwise) and `attn` (last block, explicit softmax)
"""
import argparse
import json
import math
from functools import partial

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from safetensors import safe_open
import timm.models.vision_transformer as tvit

PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def build(cfg):
    return tvit.VisionTransformer(
        img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg.get("in_chans", 3),
        embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg.get("mlp_ratio", 4.0), qkv_bias=cfg.get("qkv_bias", True), num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=cfg.get("layer_norm_eps", 1e-6)),
    ).eval()


def interpolate_pos_encoding(pos_embed, npatch, w, h, patch):
    """The official DINO formula, written out again: bicubic with scale_factor (w0+0.1)/sqrt(N)."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    cls, grid = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    w0, h0 = w // patch + 0.1, h // patch + 0.1
    g = int(math.sqrt(N))
    grid = F.interpolate(grid.reshape(1, g, g, dim).permute(0, 3, 1, 2),
                         scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls.unsqueeze(0), grid), dim=1)


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
        d, depth, heads = PRESETS[a.arch]
        cfg = dict(arch=a.arch, patch_size=a.patch, img_size=a.img_size, in_chans=3, embed_dim=d,
                   depth=depth, num_heads=heads, mlp_ratio=4.0, qkv_bias=True,
                   drop_path_rate=0.0, layer_norm_eps=1e-6)
        m = build(cfg)
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
    m = build(cfg)
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
