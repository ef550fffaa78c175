"""The DINO training step, written after the official `main_dino.py` of
facebookresearch/dino: `DINOLoss` (with its teacher-temperature schedule), the
student/teacher setup of `train_dino` and one iteration of `train_one_epoch` (schedules
applied, loss, per-parameter clipping, frozen last layer, AdamW step, EMA teacher), with
`torch.optim.AdamW` itself. Used by the step-fidelity test and the speed benchmarks.
"""
import numpy as np
import torch
import torch.nn.functional as F

from .head import DINOHead, MultiCropWrapper
from .utils import cancel_gradients_last_layer, clip_gradients, cosine_scheduler, get_params_groups
from .vit import VisionTransformer


def teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_epochs, nepochs):
    """`DINOLoss.teacher_temp_schedule`: linear warmup per epoch, then constant."""
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
        np.ones(nepochs - warmup_epochs) * teacher_temp,
    ))


class DINOLoss(torch.nn.Module):
    """`DINOLoss` on one process (the all-reduce of the batch center is the identity)."""

    def __init__(self, out_dim, ncrops, temps, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.teacher_temp_schedule = temps

    def forward(self, student_output, teacher_output, epoch):
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total_loss = 0
        n_loss_terms = 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue
                loss = torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1)
                total_loss += loss.mean()
                n_loss_terms += 1
        total_loss /= n_loss_terms
        self.update_center(teacher_output)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True) / len(teacher_output)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def ema_(teacher, student, m):
    """`train_one_epoch`'s teacher update: teacher = m * teacher + (1 - m) * student."""
    with torch.no_grad():
        for param_q, param_k in zip(student, teacher):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)


def build(cfg, device="cpu"):
    """Student, teacher (a copy without drop-path, no gradients), loss, optimizer, schedules.

    `cfg` keys: img_size, patch, dim, depth, heads, out_dim, hidden, bottleneck,
    norm_last_layer, drop_path_rate, ncrops, epochs, niter, batch, lr, min_lr, warmup_epochs,
    weight_decay, weight_decay_end, momentum_teacher, warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs; optional student_temp (0.1) and center_momentum (0.9).
    """
    def net(dpr):
        backbone = VisionTransformer(img_size=cfg["img_size"], patch_size=cfg["patch"], embed_dim=cfg["dim"],
                                     depth=cfg["depth"], num_heads=cfg["heads"], drop_path_rate=dpr)
        head = DINOHead(cfg["dim"], cfg["out_dim"], norm_last_layer=cfg["norm_last_layer"],
                        hidden_dim=cfg["hidden"], bottleneck_dim=cfg["bottleneck"])
        return MultiCropWrapper(backbone, head)
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
