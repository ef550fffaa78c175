"""Seeded DINO-style ViT exported to ONNX with dino-rs metadata, for the dino-run tests.

Follows the exporter contract: input `image` [batch, 3, S, S] (dynamic batch); outputs
`embedding` [batch, D] (normed CLS token), optionally `patch_tokens` [batch, N, D] and
`attention` [batch, heads, N] (last block, CLS to patches); `metadata_props` with the
`dino_rs.*` keys.

    python runtime_fixture.py OUT.onnx [--img 32 --patch 8 --dim 48 --depth 2 --heads 3]
        [--resize 36] [--no-attention] [--no-metadata] [--half-io] [--seed 0]
"""

import argparse
import json
import warnings

import onnx
import torch
from torch import nn

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))
        return x, attn


class ViT(nn.Module):
    def __init__(self, img, patch, dim, depth, heads, outputs):
        super().__init__()
        self.outputs = outputs
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, (img // patch) ** 2 + 1, dim) * 0.5)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, image):
        x = self.patch_embed(image).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x, attn = blk(x)
        x = self.norm(x)
        out = {"embedding": x[:, 0], "patch_tokens": x[:, 1:], "attention": attn[:, :, 0, 1:]}
        return tuple(out[o] for o in self.outputs)


def build(args):
    torch.manual_seed(args.seed)
    outputs = ["embedding"] + ([] if args.no_attention else ["attention"])
    model = ViT(args.img, args.patch, args.dim, args.depth, args.heads, outputs).eval()
    return model, outputs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--img", type=int, default=32)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--dim", type=int, default=48)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--resize", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch", default="custom")
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--no-metadata", action="store_true")
    p.add_argument("--half-io", action="store_true", help="float16 weights, input and outputs")
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    model, outputs = build(args)
    dtype = torch.float32
    if args.half_io:
        model = model.half()
        dtype = torch.float16
    dummy = torch.zeros(2, 3, args.img, args.img, dtype=dtype)
    torch.onnx.export(
        model,
        (dummy,),
        args.out,
        input_names=["image"],
        output_names=outputs,
        dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        opset_version=17,
        dynamo=False,
    )
    m = onnx.load(args.out)
    if not args.no_metadata:
        vit = {
            "arch": args.arch, "patch_size": args.patch, "img_size": args.img, "in_chans": 3,
            "embed_dim": args.dim, "depth": args.depth, "num_heads": args.heads,
            "mlp_ratio": 4.0, "qkv_bias": True, "drop_path_rate": 0.0, "layer_norm_eps": 1e-6,
        }
        resize = args.resize if args.resize is not None else args.img * 256 // 224
        ev = {"resize_size": resize, "crop_size": args.img, "mean": MEAN, "std": STD}
        props = {
            "dino_rs.vit": json.dumps(vit),
            "dino_rs.eval": json.dumps(ev),
            "dino_rs.version": "0.1.0",
            "dino_rs.fingerprint": f"fixture-seed{args.seed}-{args.dim}x{args.depth}",
            "dino_rs.outputs": ",".join(outputs),
            "dino_rs.precision": "fp16" if args.half_io else "fp32",
            "arch": args.arch, "patch_size": str(args.patch), "embed_dim": str(args.dim),
            "input_size": str(args.img), "resize_size": str(resize),
            "mean": json.dumps(MEAN), "std": json.dumps(STD),
        }
        for k, v in props.items():
            e = m.metadata_props.add()
            e.key, e.value = k, v
    onnx.save(m, args.out)


if __name__ == "__main__":
    main()
