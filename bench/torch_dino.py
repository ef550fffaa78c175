"""PyTorch reference of the DINO training step for the speed benchmarks, written like the
official code (`dino_ref.train`: explicit attention, fp16 autocast + GradScaler on CUDA,
torch.optim.AdamW, per-parameter clipping, EMA).

  torch_dino.py step  [model flags] --device cuda --precision fp16 --steps 20 --warmup 5
      synthetic crops already on the device; one JSON line like `dino-train bench`
  torch_dino.py train [model flags] --data DIR --epochs 10 --max-steps 39 --workers 2
      real multi-crop training on an ImageFolder with torchvision transforms and DataLoader
      workers (the official DataAugmentationDINO), schedules of `--epochs` epochs, stopped
      after `--max-steps` steps; one JSON line with images/s (data loading included).
      With --log-epochs, one JSON line per epoch with its mean loss (the official
      MetricLogger average); with --knn-train/--knn-val, the teacher's weighted k-NN top-1
      (k=20, T=0.07, native-size images) at the end: a seed sweep of the reference
  torch_dino.py train --config configs/imagenette-cpu.toml --minutes 60 --save-teacher T.safetensors
      the recipe of a dino-train TOML file (model, schedules, crops, blur, data_path; flags
      given after it override it), stopped at the first step that would start after 60 minutes
      of training (dino-train's --time-limit stops at an epoch's end; a config whose
      epochs fit the budget gives both the same budget),
      the teacher backbone saved with the official key names (`dino-train knn
      --pretrained_weights T.safetensors` evaluates it)
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from dino_ref.train import build, train_step  # noqa: E402
from dino_ref.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, DataAugmentationDINO  # noqa: E402
from dino_ref.vit import PRESETS  # noqa: E402


def config(a, niter):
    dim, depth, heads = PRESETS.get(a.arch, (a.dim, a.depth, a.heads))
    if a.dim:
        dim = a.dim
    if a.depth:
        depth = a.depth
    if a.heads:
        heads = a.heads
    return dict(img_size=a.global_, patch=a.patch, dim=dim, depth=depth, heads=heads, out_dim=a.out_dim,
                hidden=a.hidden, bottleneck=a.bottleneck, norm_last_layer=a.norm_last_layer,
                drop_path_rate=a.drop_path_rate, ncrops=2 + a.nlocal, epochs=a.epochs, niter=niter, batch=a.batch,
                lr=a.lr, min_lr=a.min_lr, warmup_epochs=a.warmup_epochs, weight_decay=a.weight_decay,
                weight_decay_end=a.weight_decay_end, momentum_teacher=a.momentum_teacher,
                warmup_teacher_temp=a.warmup_teacher_temp, teacher_temp=a.teacher_temp,
                warmup_teacher_temp_epochs=a.warmup_teacher_temp_epochs, student_temp=a.student_temp,
                center_momentum=a.center_momentum)


# dino-train option (TOML key) -> argument of this script, for --config.
TOML_KEYS = dict(
    arch="arch", patch_size="patch", embed_dim="dim", depth="depth", num_heads="heads", out_dim="out_dim",
    head_hidden_dim="hidden", head_bottleneck_dim="bottleneck", norm_last_layer="norm_last_layer",
    drop_path_rate="drop_path_rate", momentum_teacher="momentum_teacher", warmup_teacher_temp="warmup_teacher_temp",
    teacher_temp="teacher_temp", warmup_teacher_temp_epochs="warmup_teacher_temp_epochs",
    student_temp="student_temp", center_momentum="center_momentum", lr="lr", min_lr="min_lr",
    warmup_epochs="warmup_epochs", weight_decay="weight_decay", weight_decay_end="weight_decay_end",
    clip_grad="clip_grad", freeze_last_layer="freeze_last_layer", batch_size="batch", epochs="epochs",
    global_crops_scale="global_crops_scale", global_crop_size="global_", local_crops_number="nlocal",
    local_crops_scale="local_crops_scale", local_crop_size="local", global_blur_prob="global_blur_prob",
    local_blur_prob="local_blur_prob", blur_sigma="blur_sigma", solarization_prob="solarization_prob",
    mean="mean", std="std", data_path="data", seed="seed", num_workers="workers")
# Keys that do not change what is trained (outputs, logging, evaluation, devices).
TOML_IGNORED = {"output_dir", "saveckp_freq", "log_freq", "knn_freq", "knn_train", "knn_val", "knn_k",
                "knn_temperature", "knn_resize", "knn_crop", "device", "photometric", "precision", "dist_timeout",
                "dist_url", "local_rank", "img_size", "checkpoint_key"}
# Keys whose other values the reference does not implement.
TOML_FIXED = dict(optimizer="adamw", use_bn_in_head=False, pretrained_weights="", init_from="")


def toml_defaults(path):
    """Argument defaults from a dino-train TOML file; what the file leaves out takes
    dino-train's default where it differs from this script's (best give the resolved file of
    `dino-train train --config X --print-config`, which names every option)."""
    import tomllib
    with open(path, "rb") as f:
        t = tomllib.load(f)
    out = dict(nlocal=8, epochs=100, warmup_epochs=10, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    for k, v in t.items():
        if k in TOML_KEYS:
            out[TOML_KEYS[k]] = v
        elif k in TOML_FIXED:
            if v != TOML_FIXED[k]:
                sys.exit(f"{path}: {k} = {v!r}: the reference implements only {TOML_FIXED[k]!r}")
        elif k == "img_size":
            if v != t.get("global_crop_size", v):
                sys.exit(f"{path}: img_size must equal global_crop_size for the reference")
        elif k not in TOML_IGNORED:
            sys.exit(f"{path}: unknown key {k}")
    return out


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_step(a):
    torch.manual_seed(0)
    total = a.warmup + a.steps
    cfg = config(a, total)
    student, teacher, loss_fn, opt, sched = build(cfg, a.device)
    scaler = torch.amp.GradScaler("cuda") if a.precision == "fp16" else None
    b = a.batch
    images = [torch.randn(b, 3, a.global_, a.global_, device=a.device) for _ in range(2)]
    images += [torch.randn(b, 3, a.local, a.local, device=a.device) for _ in range(a.nlocal)]
    t0 = time.perf_counter()
    for it in range(total):
        if it == a.warmup:
            sync(a.device)
            t0 = time.perf_counter()
        loss = train_step(student, teacher, loss_fn, opt, sched, it, 0, images, 3.0, 0, scaler)
    final = loss.item()
    sync(a.device)
    secs = time.perf_counter() - t0
    print(json.dumps(dict(what="train_step", device=a.device, precision=a.precision, batch_size=b,
                          steps=a.steps, images_per_s=a.steps * b / secs, step_ms=secs * 1e3 / a.steps,
                          final_loss=final)))


def bench_train(a):
    from torchvision import datasets
    import random

    torch.manual_seed(a.seed)
    random.seed(a.seed)
    augment = DataAugmentationDINO(a.global_, a.local, a.nlocal, a.mean, a.std, a.global_crops_scale,
                                   a.local_crops_scale, a.global_blur_prob, a.local_blur_prob, a.blur_sigma,
                                   a.solarization_prob)
    ds = datasets.ImageFolder(a.data, transform=augment)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         drop_last=True, persistent_workers=a.workers > 0)
    cfg = config(a, len(loader))
    student, teacher, loss_fn, opt, sched = build(cfg, a.device)
    seen, epochs_run, t0 = 0, 0, time.perf_counter()
    steps = a.epochs * len(loader) if a.max_steps <= 0 else min(a.max_steps, a.epochs * len(loader))
    out_of_time = lambda: a.minutes and time.perf_counter() - t0 >= a.minutes * 60
    for epoch in range(-(-steps // len(loader))):
        losses = []
        for i, (images, _) in enumerate(loader):
            it = epoch * len(loader) + i
            if it >= steps or out_of_time():
                break
            images = [im.to(a.device, non_blocking=True) for im in images]
            losses.append(train_step(student, teacher, loss_fn, opt, sched, it, epoch, images, a.clip_grad,
                                     a.freeze_last_layer))
            seen += a.batch
        epochs_run = epoch + 1
        if a.log_epochs and losses:
            mean = torch.stack(losses).mean().item()
            print(json.dumps(dict(what="epoch", epoch=epoch + 1, loss=mean, seed=a.seed,
                                  seconds=time.perf_counter() - t0)), flush=True)
        if out_of_time():
            break
    secs = time.perf_counter() - t0
    if a.save_teacher:
        save_backbone(teacher.backbone, a.save_teacher, cfg)
    if a.knn_train:
        top1 = knn_top1(teacher.backbone, a)
        print(json.dumps(dict(what="knn", top1=top1, seed=a.seed)), flush=True)
    print(json.dumps(dict(what="train_epochs", steps=steps, images=seen, seconds=secs, images_per_s=seen / secs,
                          epochs=epochs_run, workers=a.workers, threads=a.threads)))


def save_backbone(backbone, path, cfg=None):
    """The backbone's state dict with the official key names (cls_token, pos_embed,
    patch_embed.proj.*, blocks.N.*, norm.*): safetensors for a .safetensors path, else torch.save.
    With `cfg` (the dict of `config`), the safetensors header also carries the dino-rs backbone
    metadata (format, kind, architecture), so that `dino-train knn` reads the exact architecture
    (from the tensors alone a width of 192 would be taken for vit_tiny, depth 12)."""
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file
        meta = None
        if cfg is not None:
            vit = dict(arch="custom", patch_size=cfg["patch"], img_size=cfg["img_size"], in_chans=3,
                       embed_dim=cfg["dim"], depth=cfg["depth"], num_heads=cfg["heads"], mlp_ratio=4.0,
                       qkv_bias=True, drop_path_rate=0.0, layer_norm_eps=1e-6)
            meta = {"dino_rs.format": "dino-rs/1", "dino_rs.kind": "backbone", "dino_rs.vit": json.dumps(vit)}
        save_file(state, str(path), metadata=meta)
    else:
        torch.save(state, path)


@torch.no_grad()
def knn_top1(backbone, a, k=20, t=0.07):
    """Official weighted k-NN (eval_knn.knn_classifier) on L2-normalised CLS features of the
    native-size images, top-1 in percent."""
    from torchvision import datasets, transforms
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(a.mean, a.std)])
    backbone.eval()

    def features(root):
        ds = datasets.ImageFolder(root, transform=tf)
        loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=a.workers)
        feats, labels = [], []
        for x, y in loader:
            feats.append(torch.nn.functional.normalize(backbone(x.to(a.device)), dim=1))
            labels.append(y.to(a.device))
        return torch.cat(feats), torch.cat(labels), len(ds.classes)

    train_f, train_y, ncls = features(a.knn_train)
    val_f, val_y, _ = features(a.knn_val)
    sim, idx = (val_f @ train_f.T).topk(k, dim=1)
    weights = (sim / t).exp()
    votes = torch.zeros(len(val_f), ncls, device=a.device)
    votes.scatter_add_(1, train_y[idx], weights)
    return (votes.argmax(1) == val_y).float().mean().item() * 100


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["step", "train"])
    ap.add_argument("--config", help="a dino-train TOML file: its recipe becomes the defaults of the flags below")
    ap.add_argument("--arch", default="custom")
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--dim", type=int, default=0)
    ap.add_argument("--depth", type=int, default=0)
    ap.add_argument("--heads", type=int, default=0)
    ap.add_argument("--out-dim", type=int, default=65536)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--global", dest="global_", type=int, default=224)
    ap.add_argument("--local", type=int, default=96)
    ap.add_argument("--nlocal", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--epochs", type=int, default=1, help="schedule length (and loop, see --max-steps)")
    ap.add_argument("--warmup-epochs", type=int, default=0, help="learning-rate warmup epochs")
    ap.add_argument("--max-steps", type=int, default=0, help="train: stop after this many steps (0: all)")
    ap.add_argument("--precision", choices=["fp16", "fp32"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--data")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-epochs", action="store_true", help="train: mean loss of every epoch")
    ap.add_argument("--knn-train", help="train: ImageFolder of k-NN train images (native size)")
    ap.add_argument("--knn-val", help="train: ImageFolder of k-NN test images")
    ap.add_argument("--mean", type=float, nargs=3, default=list(CIFAR_MEAN))
    ap.add_argument("--std", type=float, nargs=3, default=list(CIFAR_STD))
    ap.add_argument("--bottleneck", type=int, default=256)
    ap.add_argument("--norm-last-layer", type=lambda v: v.lower() in ("1", "true"), default=True)
    ap.add_argument("--drop-path-rate", type=float, default=0.1)
    ap.add_argument("--momentum-teacher", type=float, default=0.996)
    ap.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    ap.add_argument("--teacher-temp", type=float, default=0.04)
    ap.add_argument("--warmup-teacher-temp-epochs", type=int, default=0)
    ap.add_argument("--student-temp", type=float, default=0.1)
    ap.add_argument("--center-momentum", type=float, default=0.9)
    ap.add_argument("--min-lr", type=float, default=1e-6)
    ap.add_argument("--weight-decay", type=float, default=0.04)
    ap.add_argument("--weight-decay-end", type=float, default=0.4)
    ap.add_argument("--clip-grad", type=float, default=3.0)
    ap.add_argument("--freeze-last-layer", type=int, default=1)
    ap.add_argument("--global-crops-scale", type=float, nargs=2, default=[0.4, 1.0])
    ap.add_argument("--local-crops-scale", type=float, nargs=2, default=[0.05, 0.4])
    ap.add_argument("--global-blur-prob", type=float, nargs=2, default=[1.0, 0.1])
    ap.add_argument("--local-blur-prob", type=float, default=0.5)
    ap.add_argument("--blur-sigma", type=float, nargs=2, default=[0.1, 2.0])
    ap.add_argument("--solarization-prob", type=float, nargs=2, default=[0.0, 0.2])
    ap.add_argument("--minutes", type=float, default=0,
                    help="train: start no step after this many minutes of training")
    ap.add_argument("--save-teacher", help="train: write the teacher backbone here (official key names)")
    pre, _ = ap.parse_known_args()
    if pre.config:
        ap.set_defaults(**toml_defaults(pre.config))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA requested but not available")
    (bench_step if a.mode == "step" else bench_train)(a)


if __name__ == "__main__":
    main()
