"""dino-rs fixtures around the references (not official code): the architecture dict that
dino-rs files carry as `dino_rs.vit` metadata, seeded ViT weights for tests and benchmarks,
and timm's `VisionTransformer` built from the same dict, the second, independent ViT
reference."""
import math
from functools import partial

import torch

from .vit import PRESETS, VisionTransformer


def vit_config(arch, patch_size, img_size, sizes=None):
    """The `dino_rs.vit` dict; `sizes` (embed_dim, depth, num_heads) default to the preset of `arch`."""
    embed_dim, depth, num_heads = sizes if sizes is not None else PRESETS[arch]
    return dict(arch=arch, patch_size=patch_size, img_size=img_size, in_chans=3, embed_dim=embed_dim,
                depth=depth, num_heads=num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0,
                layer_norm_eps=1e-6)


def seeded_vit(cfg, seed):
    """Weights large enough that attention is far from uniform and every parameter matters."""
    torch.manual_seed(seed)
    m = VisionTransformer.from_config(cfg, init_weights=False).eval()
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
    """A module's state dict as contiguous, detached tensors (what safetensors stores)."""
    return {k: v.detach().contiguous() for k, v in m.state_dict().items()}


def timm_vit(cfg):
    """timm's VisionTransformer (no classifier, eval mode) for a `dino_rs.vit` dict."""
    import timm.models.vision_transformer as tvit

    return tvit.VisionTransformer(
        img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg.get("in_chans", 3),
        embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
        mlp_ratio=cfg.get("mlp_ratio", 4.0), qkv_bias=cfg.get("qkv_bias", True), num_classes=0,
        norm_layer=partial(torch.nn.LayerNorm, eps=cfg.get("layer_norm_eps", 1e-6)),
    ).eval()
