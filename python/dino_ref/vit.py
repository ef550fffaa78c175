"""The DINO Vision Transformer, written after the official `vision_transformer.py` of
facebookresearch/dino: patch embedding, pre-norm blocks with explicit attention
(softmax(q k^T * scale) v), erf GELU MLP, stochastic depth (`drop_path`), the official
`interpolate_pos_encoding` (bicubic with `scale_factor` (w0 + 0.1) / sqrt(N)) and weight
init. Parameters carry the official state-dict keys (`blocks.0.attn.qkv.weight`, ...).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# (embed_dim, depth, num_heads) of the official vit_tiny / vit_small / vit_base.
PRESETS = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}


def drop_path(x, drop_prob=0.0, training=False):
    """Stochastic depth per sample: zero a sample's residual branch with `drop_prob`."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    random_tensor = (keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep_prob) * random_tensor


class DropPath(nn.Module):
    def __init__(self, drop_prob):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


def init_weights_(m):
    """`_init_weights` of the ViT and of `DINOHead`: truncated-normal (std 0.02) linears
    with zero bias, unit LayerNorms (the head has none)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        """(output, attention probabilities [B, heads, N, N])."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)), attn


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, eps=1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        """(tokens, this block's attention): the official block returns one or the other."""
        y, attn = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x))), attn


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


def interpolate_pos_encoding(pos_embed, npatch, w, h, patch_size):
    """The official formula for an image of `w` x `h` pixels with `npatch` patches: the
    position grid resized bicubically by scale_factor (w // p + 0.1) / sqrt(N)."""
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    cls, grid = pos_embed[:, 0], pos_embed[:, 1:]
    dim = pos_embed.shape[-1]
    # The 0.1 avoids a floating-point error in the interpolation's output size.
    w0, h0 = w // patch_size + 0.1, h // patch_size + 0.1
    g = int(math.sqrt(N))
    grid = F.interpolate(grid.reshape(1, g, g, dim).permute(0, 3, 1, 2),
                         scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
    assert int(w0) == grid.shape[-2] and int(h0) == grid.shape[-1]
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((cls.unsqueeze(0), grid), dim=1)


class VisionTransformer(nn.Module):
    """The official ViT backbone (no classifier). `init_weights=False` keeps PyTorch's
    default init, for callers that overwrite every parameter from a seed of their own."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0, layer_norm_eps=1e-6, init_weights=True):
        super().__init__()
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]  # stochastic depth decay rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, dpr[i], layer_norm_eps) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=layer_norm_eps)
        if init_weights:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            self.apply(init_weights_)

    @classmethod
    def from_config(cls, cfg, init_weights=True):
        """From the dino-rs architecture dict (`dino_rs.vit` metadata, see `fixtures.vit_config`)."""
        return cls(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg.get("in_chans", 3),
                   embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                   mlp_ratio=cfg.get("mlp_ratio", 4.0), qkv_bias=cfg.get("qkv_bias", True),
                   drop_path_rate=cfg.get("drop_path_rate", 0.0), layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
                   init_weights=init_weights)

    def interpolate_pos_encoding(self, x, w, h):
        return interpolate_pos_encoding(self.pos_embed, x.shape[1] - 1, w, h, self.patch_embed.patch_size)

    def prepare_tokens(self, x):
        B, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        return x + self.interpolate_pos_encoding(x, w, h)

    def forward_all(self, x):
        """(normed CLS token, normed patch tokens, last block's CLS-to-patch attention
        [B, heads, N]): the outputs a dino-rs ONNX file can carry."""
        x = self.prepare_tokens(x)
        for blk in self.blocks:
            x, attn = blk(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:], attn[:, :, 0, 1:]

    def forward(self, x):
        """The normed CLS token, the official backbone output."""
        return self.forward_all(x)[0]
