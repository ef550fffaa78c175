"""A PyTorch DINO student/teacher written like the official code (`vision_transformer.py`,
`utils.MultiCropWrapper`, `main_dino.train_one_epoch`), for the step-fidelity test of
dino-train and for the speed benchmarks (`bench/torch_dino.py`).

The attention is explicit (softmax(q k^T * scale) @ v), as in the official ViT; the
optimisation step uses the official pieces of `dino_reference.py` and torch.optim.AdamW.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dino_reference import (DINOLoss, cancel_gradients_last_layer, clip_gradients, cosine_scheduler,
                            ema_, get_params_groups, teacher_temp_schedule)


def drop_path(x, p, training):
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=True), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, heads, dpr):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)
        self.dpr = dpr

    def forward(self, x):
        x = x + drop_path(self.attn(self.norm1(x)), self.dpr, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.dpr, self.training)


class PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, img_size, patch, dim, depth, heads, drop_path_rate=0.0):
        super().__init__()
        self.patch = patch
        self.patch_embed = PatchEmbed(patch, dim)
        n = (img_size // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, dim))
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, depth)]  # stochastic depth decay rule
        self.blocks = nn.ModuleList([Block(dim, heads, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init)

    def interpolate_pos_encoding(self, x, w, h):
        npatch, N = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == N and w == h:
            return self.pos_embed
        cls, grid = self.pos_embed[:, 0], self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch + 0.1, h // self.patch + 0.1
        g = int(math.sqrt(N))
        grid = F.interpolate(grid.reshape(1, g, g, dim).permute(0, 3, 1, 2),
                             scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)), mode="bicubic")
        grid = grid.permute(0, 2, 3, 1).view(1, -1, dim)
        return torch.cat((cls.unsqueeze(0), grid), dim=1)

    def forward(self, x):
        B, _, w, h = x.shape
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, w, h)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)[:, 0]


def _init(m):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class DINOHead(nn.Module):
    def __init__(self, in_dim, out_dim, norm_last_layer=True, hidden_dim=2048, bottleneck_dim=256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        self.apply(_init)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x):
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


class MultiCropWrapper(nn.Module):
    """utils.MultiCropWrapper: one backbone forward per run of equal-resolution crops."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        if not isinstance(x, list):
            x = [x]
        sizes = torch.tensor([inp.shape[-1] for inp in x])
        idx_crops = torch.cumsum(torch.unique_consecutive(sizes, return_counts=True)[1], 0)
        start, output = 0, []
        for end in idx_crops:
            output.append(self.backbone(torch.cat(x[start:end])))
            start = end
        return self.head(torch.cat(output))


def build(cfg, device="cpu"):
    """Student, teacher (a copy without drop-path, no gradients), loss, optimizer, schedules.

    `cfg` keys: img_size, patch, dim, depth, heads, out_dim, hidden, bottleneck,
    norm_last_layer, drop_path_rate, ncrops, epochs, niter, batch, lr, min_lr, warmup_epochs,
    weight_decay, weight_decay_end, momentum_teacher, warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs; optional student_temp (0.1) and center_momentum (0.9).
    """
    def net(dpr):
        return MultiCropWrapper(
            VisionTransformer(cfg["img_size"], cfg["patch"], cfg["dim"], cfg["depth"], cfg["heads"], dpr),
            DINOHead(cfg["dim"], cfg["out_dim"], cfg["norm_last_layer"], cfg["hidden"], cfg["bottleneck"]))
    student, teacher = net(cfg["drop_path_rate"]).to(device), net(0.0).to(device)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    temps = teacher_temp_schedule(cfg["warmup_teacher_temp"], cfg["teacher_temp"],
                                  cfg["warmup_teacher_temp_epochs"], cfg["epochs"])
    loss = DINOLoss(cfg["out_dim"], cfg["ncrops"], temps, cfg.get("student_temp", 0.1),
                    cfg.get("center_momentum", 0.9)).to(device)
    opt = torch.optim.AdamW(get_params_groups(student.named_parameters()))
    n = cfg["epochs"] * cfg["niter"]
    sched = dict(
        lr=cosine_scheduler(cfg["lr"] * cfg["batch"] / 256.0, cfg["min_lr"], cfg["epochs"], cfg["niter"],
                            cfg["warmup_epochs"]),
        wd=cosine_scheduler(cfg["weight_decay"], cfg["weight_decay_end"], cfg["epochs"], cfg["niter"]),
        momentum=cosine_scheduler(cfg["momentum_teacher"], 1, cfg["epochs"], cfg["niter"]),
    )
    assert all(len(v) == n for v in sched.values())
    return student, teacher, loss, opt, sched


def train_step(student, teacher, loss_fn, opt, sched, it, epoch, images, clip_grad, freeze_last_layer,
               scaler=None, grad_norms=None):
    """One iteration of the official `train_one_epoch` (images: list of crop batches).

    The gradient norms measured by `clip_gradients` (the official `param_norms`) are appended
    to the list `grad_norms` when one is given."""
    for i, g in enumerate(opt.param_groups):
        g["lr"] = sched["lr"][it]
        if i == 0:
            g["weight_decay"] = sched["wd"][it]
    with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
        teacher_output = teacher(images[:2])
        student_output = student(images)
        loss = loss_fn(student_output, teacher_output, epoch)
    opt.zero_grad()
    named = list(student.named_parameters())
    if scaler is None:
        loss.backward()
        if clip_grad:
            norms = clip_gradients(named, clip_grad)
            if grad_norms is not None:
                grad_norms.append(norms)
        cancel_gradients_last_layer(epoch, named, freeze_last_layer)
        opt.step()
    else:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(opt)
            clip_gradients(named, clip_grad)
        cancel_gradients_last_layer(epoch, named, freeze_last_layer)
        scaler.step(opt)
        scaler.update()
    ema_(list(teacher.parameters()), list(student.parameters()), sched["momentum"][it])
    return loss.detach()
