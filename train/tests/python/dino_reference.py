"""PyTorch references for the algorithmic pieces of the DINO training step.

Each function below is rewritten after the official facebookresearch/dino code
(`main_dino.DINOLoss`, `main_dino.train_one_epoch`, `utils.cosine_scheduler`,
`utils.get_params_groups`, `utils.clip_gradients`, `utils.cancel_gradients_last_layer`,
`utils.LARS`) and uses `torch.optim.AdamW` / `torch.optim.SGD` themselves. It is run by the
`algo_*` tests of dino-train:

    python dino_reference.py CASE OUT_DIR [--kind adamw|sgd|lars]

writes `OUT_DIR/CASE.safetensors`: the seeded random inputs and the expected outputs, with
the case's settings as JSON under the metadata key `config`. Everything runs on CPU, fp32
(schedules in f64).
"""

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

SEED = 20211
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


# ---------------------------------------------------------------- official pieces


def cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """utils.cosine_scheduler: linear warmup, then half a cosine, one value per iteration."""
    warmup = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    out = np.concatenate((warmup, cosine))
    assert len(out) == epochs * niter_per_ep
    return out


def teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_epochs, nepochs):
    """DINOLoss.teacher_temp_schedule: linear warmup per epoch, then constant."""
    return np.concatenate((
        np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
        np.ones(nepochs - warmup_epochs) * teacher_temp,
    ))


class DINOLoss(torch.nn.Module):
    """main_dino.DINOLoss on one process (the all-reduce of the batch center is the identity)."""

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


def get_params_groups(named):
    """utils.get_params_groups: no weight decay for biases and 1-D parameters."""
    regularized, not_regularized = [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if name.endswith(".bias") or len(p.shape) == 1:
            not_regularized.append(p)
        else:
            regularized.append(p)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(named, clip):
    """utils.clip_gradients: each gradient clipped on its own to norm `clip`."""
    norms = []
    for _, p in named:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            norms.append(param_norm)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)
    return norms


def cancel_gradients_last_layer(epoch, named, freeze_last_layer):
    """utils.cancel_gradients_last_layer: drop the head's last-layer gradients early on."""
    if epoch >= freeze_last_layer:
        return
    for n, p in named:
        if "last_layer" in n:
            p.grad = None


class LARS(torch.optim.Optimizer):
    """utils.LARS (Barlow Twins): no decay and no trust ratio for 1-D parameters."""

    def __init__(self, params, lr=0, weight_decay=0, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim != 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0,
                                    torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one),
                                    one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


def ema_(teacher, student, m):
    """train_one_epoch's teacher update."""
    with torch.no_grad():
        for param_q, param_k in zip(student, teacher):
            param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)


# ---------------------------------------------------------------- cases


def case_schedule(out, tensors, config):
    runs = {
        # (base, final, epochs, niter, warmup_epochs, start_warmup)
        "cos_warmup": (0.0005 * 96 / 256.0, 1e-6, 7, 13, 2, 0.0),
        "cos_plain": (0.04, 0.4, 5, 11, 0, 0.0),
        "cos_start": (0.3, 0.01, 4, 9, 1, 0.05),
        "momentum": (0.996, 1.0, 6, 17, 0, 0.0),
        "one_epoch": (1.0, 0.0, 1, 1, 0, 0.0),
        "all_warmup": (2.0, 0.5, 3, 4, 3, 0.0),
    }
    for name, args in runs.items():
        tensors[name] = torch.from_numpy(cosine_scheduler(*args)).to(torch.float64)
    config["runs"] = {k: list(v) for k, v in runs.items()}
    temps = {
        "temp_warmup": (0.04, 0.07, 30, 100),
        "temp_const": (0.04, 0.04, 0, 10),
        "temp_one": (0.02, 0.07, 1, 3),
    }
    for name, args in temps.items():
        tensors[name] = torch.from_numpy(teacher_temp_schedule(*args)).to(torch.float64)
    config["temps"] = {k: list(v) for k, v in temps.items()}
    # The whole trainer setup of main_dino.train_dino for one set of arguments.
    t = dict(epochs=6, niter=10, batch=48, lr=0.0005, min_lr=1e-6, warmup_epochs=2,
             weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996,
             warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=3)
    config["train"] = t
    tensors["train_lr"] = torch.from_numpy(cosine_scheduler(
        t["lr"] * t["batch"] / 256.0, t["min_lr"], t["epochs"], t["niter"], warmup_epochs=t["warmup_epochs"]))
    tensors["train_wd"] = torch.from_numpy(cosine_scheduler(
        t["weight_decay"], t["weight_decay_end"], t["epochs"], t["niter"]))
    tensors["train_momentum"] = torch.from_numpy(cosine_scheduler(
        t["momentum_teacher"], 1, t["epochs"], t["niter"]))
    tensors["train_temp"] = torch.from_numpy(teacher_temp_schedule(
        t["warmup_teacher_temp"], t["teacher_temp"], t["warmup_teacher_temp_epochs"], t["epochs"]))


def case_loss(out, tensors, config):
    g = torch.Generator().manual_seed(SEED)
    out_dim, ncrops, batch, epochs = 64, 6, 4, 5
    temps = teacher_temp_schedule(0.04, 0.07, 3, epochs)
    config.update(out_dim=out_dim, ncrops=ncrops, batch=batch, temps=[float(t) for t in temps])
    loss_fn = DINOLoss(out_dim, ncrops, temps)
    # bf16 logits in the last step: the loss computes in fp32 from the widened values.
    dtypes = ["float32"] * (epochs - 1) + ["bfloat16"]
    config["dtypes"] = dtypes
    for step in range(epochs):
        s = torch.randn(ncrops * batch, out_dim, generator=g) * 3
        t = torch.randn(2 * batch, out_dim, generator=g) * 2 + torch.linspace(-1, 3, out_dim)
        if dtypes[step] == "bfloat16":
            s, t = s.bfloat16(), t.bfloat16()
        tensors[f"student_{step}"], tensors[f"teacher_{step}"] = s, t
        s32 = s.float().requires_grad_(True)
        t32 = t.float()
        probs = F.softmax((t32 - loss_fn.center) / temps[step], dim=-1)
        ent = -(torch.special.xlogy(probs, probs)).sum(-1).mean()
        mean_p = probs.mean(0)
        ent_mean = -(torch.special.xlogy(mean_p, mean_p)).sum()
        tensors[f"entropy_{step}"] = torch.stack([ent, ent_mean, torch.tensor(math.log(out_dim))]).double()
        loss = loss_fn(s32, t32, epoch=step)
        loss.backward()
        tensors[f"loss_{step}"] = loss.detach().reshape(1)
        tensors[f"grad_{step}"] = s32.grad
        tensors[f"center_{step}"] = loss_fn.center.clone()


def make_params(g):
    """A few parameters named like the real student's, in registration order."""
    shapes = [
        ("backbone.cls_token", (1, 1, 8), True),
        ("backbone.blocks.0.attn.qkv.weight", (24, 8), True),
        ("backbone.blocks.0.attn.qkv.bias", (24,), True),
        ("backbone.blocks.0.norm1.weight", (8,), True),
        ("backbone.blocks.0.mlp.fc1.weight", (16, 8), True),
        ("head.mlp.0.weight", (12, 8), True),
        ("head.mlp.0.bias", (12,), True),
        ("head.unused.weight", (3, 4), True),  # requires grad, never receives one
        ("head.last_layer.weight_g", (10, 1), False),  # frozen as with norm_last_layer
        ("head.last_layer.weight_v", (10, 12), True),
    ]
    params = []
    for name, shape, trainable in shapes:
        p = torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.5, requires_grad=trainable)
        params.append((name, p))
    return params


def case_clip(out, tensors, config):
    g = torch.Generator().manual_seed(SEED + 1)
    named = make_params(g)
    clip = 3.0
    config["clip"] = clip
    scales = [0.1, 2.0, 0.05, 1.0, 3.0, 0.5, 10.0, 0.0, 0.0, 4.0]
    for (name, p), scale in zip(named, scales):
        tensors[f"param.{name}"] = p.detach().clone()
        if p.requires_grad and name != "head.unused.weight":
            p.grad = torch.randn(p.shape, generator=g) * scale
            tensors[f"grad.{name}"] = p.grad.clone()
    norms = clip_gradients(named, clip)
    with_grad = [n for n, p in named if p.grad is not None]
    for name, norm in zip(with_grad, norms):
        tensors[f"norm.{name}"] = norm.reshape(1)
    for name, p in named:
        if p.grad is not None:
            tensors[f"clipped.{name}"] = p.grad.clone()
    # The last layer is frozen during epoch 0 only.
    cancel_gradients_last_layer(1, named, 1)
    config["kept_at_epoch_1"] = sorted(n for n, p in named if p.grad is not None)
    cancel_gradients_last_layer(0, named, 1)
    config["kept_at_epoch_0"] = sorted(n for n, p in named if p.grad is not None)


def case_ema(out, tensors, config):
    g = torch.Generator().manual_seed(SEED + 2)
    student = make_params(g)
    teacher = make_params(g)
    momenta = cosine_scheduler(0.996, 1, 2, 2)[:3]
    config["momenta"] = [float(m) for m in momenta]
    for name, p in teacher:
        tensors[f"teacher.{name}"] = p.detach().clone()
    for step, m in enumerate(momenta):
        # The student moves between teacher updates.
        with torch.no_grad():
            for name, p in student:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
                tensors[f"student_{step}.{name}"] = p.detach().clone()
        ema_([p for _, p in teacher], [p for _, p in student], m)
        for name, p in teacher:
            tensors[f"teacher_{step}.{name}"] = p.detach().clone()


def case_optim(out, tensors, config, kind):
    g = torch.Generator().manual_seed(SEED + 3)
    named = make_params(g)
    epochs, niter, freeze_last_layer, clip = 3, 3, 1, 3.0
    lr = cosine_scheduler(0.01, 1e-4, epochs, niter, warmup_epochs=1)
    wd = cosine_scheduler(0.04, 0.4, epochs, niter)
    config.update(kind=kind, epochs=epochs, niter=niter, freeze_last_layer=freeze_last_layer,
                  clip=clip, lr=[float(x) for x in lr], wd=[float(x) for x in wd],
                  names=[n for n, _ in named])
    for name, p in named:
        tensors[f"init.{name}"] = p.detach().clone()
    groups = get_params_groups(named)
    if kind == "adamw":
        opt = torch.optim.AdamW(groups)
    elif kind == "sgd":
        opt = torch.optim.SGD(groups, lr=0, momentum=0.9)
    else:
        opt = LARS(groups)
    for it in range(epochs * niter):
        epoch = it // niter
        for i, group in enumerate(opt.param_groups):
            group["lr"] = lr[it]
            if i == 0:
                group["weight_decay"] = wd[it]
        opt.zero_grad()
        for name, p in named:
            if p.requires_grad and name != "head.unused.weight":
                p.grad = torch.randn(p.shape, generator=g) * 2.0
                tensors[f"grad_{it}.{name}"] = p.grad.clone()
        clip_gradients(named, clip)
        cancel_gradients_last_layer(epoch, named, freeze_last_layer)
        opt.step()
        for name, p in named:
            tensors[f"param_{it}.{name}"] = p.detach().clone()
    by_param = {id(p): n for n, p in named}
    for p, state in opt.state.items():
        for key, value in state.items():
            tensors[f"state.{by_param[id(p)]}.{key}"] = value.clone() if key != "step" else value.reshape(1).double()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=["schedule", "loss", "clip", "ema", "optim"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--kind", choices=["adamw", "sgd", "lars"], default="adamw")
    args = ap.parse_args()
    tensors, config = {}, {"torch": torch.__version__}
    if args.case == "optim":
        case_optim(args.out, tensors, config, args.kind)
    else:
        globals()[f"case_{args.case}"](args.out, tensors, config)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(args.out / f"{args.case}.safetensors"), metadata={"config": json.dumps(config)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
