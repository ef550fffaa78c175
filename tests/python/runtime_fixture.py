"""Seeded DINO ViT (`dino_ref.vit`) exported to ONNX with dino-rs metadata, for the dino-run tests.

Follows the exporter contract: input `image` [batch, 3, S, S] (dynamic batch); outputs
`embedding` [batch, D] (normed CLS token), optionally `patch_tokens` [batch, N, D] and
`attention` [batch, heads, N] (last block, CLS to patches); `metadata_props` with the
`dino_rs.*` keys.

    python runtime_fixture.py OUT.onnx [--img 32 --patch 8 --dim 48 --depth 2 --heads 3]
        [--resize 36] [--no-attention] [--no-metadata] [--half-io] [--seed 0]
        [--first-row-only] [--meta-dim D]   (broken models, for the error tests)
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from dino_ref.fixtures import vit_config  # noqa: E402
from dino_ref.transforms import IMAGENET_MEAN as MEAN, IMAGENET_STD as STD  # noqa: E402
from dino_ref.vit import VisionTransformer  # noqa: E402

OUTPUTS = ("embedding", "patch_tokens", "attention")


class Outputs(nn.Module):
    """The ViT with the named subset of its outputs, in order (the ONNX outputs)."""

    def __init__(self, vit, outputs, first_row_only=False):
        super().__init__()
        self.vit, self.outputs, self.first_row_only = vit, outputs, first_row_only

    def forward(self, image):
        out = dict(zip(OUTPUTS, self.vit.forward_all(image)))
        if self.first_row_only:  # a broken graph that ignores the batch
            out["embedding"] = out["embedding"][:1]
        return tuple(out[o] for o in self.outputs)


def build(args, cfg):
    """PyTorch's default init, with a class token and position embedding of std 0.5."""
    torch.manual_seed(args.seed)
    vit = VisionTransformer.from_config(cfg, init_weights=False)
    with torch.no_grad():
        vit.cls_token.copy_(torch.randn_like(vit.cls_token) * 0.5)
        vit.pos_embed.copy_(torch.randn_like(vit.pos_embed) * 0.5)
    outputs = ["embedding"] + ([] if args.no_attention else ["attention"])
    return Outputs(vit, outputs, args.first_row_only).eval(), outputs


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
    p.add_argument("--first-row-only", action="store_true",
                   help="a broken model: `embedding` holds the first image's row only")
    p.add_argument("--meta-dim", type=int, default=None,
                   help="a broken model: metadata claiming this embed_dim")
    args = p.parse_args()

    warnings.filterwarnings("ignore")
    vit = vit_config(args.arch, args.patch, args.img, (args.dim, args.depth, args.heads))
    model, outputs = build(args, vit)
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
        resize = args.resize if args.resize is not None else args.img * 256 // 224
        ev = {"resize_size": resize, "crop_size": args.img, "mean": MEAN, "std": STD}
        meta_vit = dict(vit)
        if args.meta_dim is not None:
            meta_vit["embed_dim"] = args.meta_dim
        props = {
            "dino_rs.vit": json.dumps(meta_vit),
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
