"""PyTorch references for the algorithmic pieces of the DINO training step.

Each case below runs the official facebookresearch/dino pieces as `dino_ref` writes them out
(`main_dino.DINOLoss`, `main_dino.train_one_epoch`'s EMA, `utils.cosine_scheduler`,
`utils.get_params_groups`, `utils.clip_gradients`, `utils.cancel_gradients_last_layer`,
`utils.LARS`) and `torch.optim.AdamW` / `torch.optim.SGD` themselves. It is run by the
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

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
from dino_ref.train import DINOLoss, ema_, teacher_temp_schedule  # noqa: E402
from dino_ref.utils import (LARS, cancel_gradients_last_layer, clip_gradients, cosine_scheduler,  # noqa: E402
                            get_params_groups)

SEED = 20211
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


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
