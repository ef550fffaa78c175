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
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
from dino_ref.train import build, train_step  # noqa: E402
from dino_ref.transforms import CIFAR_MEAN, CIFAR_STD, DataAugmentationDINO  # noqa: E402
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
                hidden=a.hidden, bottleneck=256, norm_last_layer=True, drop_path_rate=0.1,
                ncrops=2 + a.nlocal, epochs=a.epochs, niter=niter, batch=a.batch, lr=a.lr, min_lr=1e-6,
                warmup_epochs=a.warmup_epochs, weight_decay=0.04, weight_decay_end=0.4, momentum_teacher=0.996,
                warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0)


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
    augment = DataAugmentationDINO(a.global_, a.local, a.nlocal, a.mean, a.std)
    ds = datasets.ImageFolder(a.data, transform=augment)
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.workers,
                                         drop_last=True, persistent_workers=a.workers > 0)
    cfg = config(a, len(loader))
    student, teacher, loss_fn, opt, sched = build(cfg, a.device)
    seen, t0 = 0, time.perf_counter()
    steps = a.epochs * len(loader) if a.max_steps <= 0 else min(a.max_steps, a.epochs * len(loader))
    for epoch in range(-(-steps // len(loader))):
        losses = []
        for i, (images, _) in enumerate(loader):
            it = epoch * len(loader) + i
            if it >= steps:
                break
            images = [im.to(a.device, non_blocking=True) for im in images]
            losses.append(train_step(student, teacher, loss_fn, opt, sched, it, epoch, images, 3.0, 1))
            seen += a.batch
        if a.log_epochs and losses:
            mean = torch.stack(losses).mean().item()
            print(json.dumps(dict(what="epoch", epoch=epoch + 1, loss=mean, seed=a.seed)), flush=True)
    secs = time.perf_counter() - t0
    if a.knn_train:
        top1 = knn_top1(teacher.backbone, a)
        print(json.dumps(dict(what="knn", top1=top1, seed=a.seed)), flush=True)
    print(json.dumps(dict(what="train_epochs", steps=steps, images=seen, seconds=secs, images_per_s=seen / secs,
                          workers=a.workers, threads=a.threads)))


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
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("CUDA requested but not available")
    (bench_step if a.mode == "step" else bench_train)(a)


if __name__ == "__main__":
    main()
