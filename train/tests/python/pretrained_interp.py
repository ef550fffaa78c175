"""Reference side of `train/tests/pretrained_weights.rs`: an official backbone `.pth` and
what the official code makes of it at other image sizes.

    python pretrained_interp.py DIR DIM DEPTH HEADS PATCH NATIVE SIZE [SIZE ...]

builds the official ViT (`dino_ref.vit`, seeded) learned at NATIVE pixels, saves its state
dict with `torch.save` as `DIR/backbone.pth` (the layout of the released
`dino_deitsmall16_pretrain.pth`), and for each SIZE writes into `DIR/reference.safetensors`
`pos_embed_SIZE` (the official `interpolate_pos_encoding` for a SIZE x SIZE input),
`image_SIZE` (two seeded images) and `tokens_SIZE` (the backbone's normed output tokens on
them, CLS then patches, `[2, 1 + n, DIM]`; the backbone interpolates the position embedding
on the fly).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
from dino_ref.vit import VisionTransformer, interpolate_pos_encoding  # noqa: E402

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def main():
    out = Path(sys.argv[1])
    dim, depth, heads, patch, native = (int(v) for v in sys.argv[2:7])
    sizes = [int(v) for v in sys.argv[7:]]
    torch.manual_seed(3)
    model = VisionTransformer(img_size=native, patch_size=patch, embed_dim=dim, depth=depth,
                              num_heads=heads).eval()
    with torch.no_grad():
        # A position embedding with structure at every scale (trunc_normal alone is noise).
        model.pos_embed.add_(torch.randn_like(model.pos_embed))
    torch.save(model.state_dict(), out / "backbone.pth")
    tensors = {}
    for size in sizes:
        npatch = (size // patch) ** 2
        tensors[f"pos_embed_{size}"] = interpolate_pos_encoding(model.pos_embed, npatch, size, size,
                                                                patch)
        image = torch.randn(2, 3, size, size)
        tensors[f"image_{size}"] = image
        with torch.no_grad():
            cls, patches, _ = model.forward_all(image)
            tensors[f"tokens_{size}"] = torch.cat((cls.unsqueeze(1), patches), dim=1)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "reference.safetensors"), metadata={"torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
