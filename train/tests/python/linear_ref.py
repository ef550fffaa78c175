"""PyTorch rewrite of the official `eval_linear.py` (facebookresearch/dino) on a tiny seeded
ViT (`python/dino_ref/vit.py`), the reference of `train/tests/linear_ref.rs`.

  linear_ref.py probe OUT_DIR
  linear_ref.py crop IMAGE CASES.json OUT.safetensors

`probe` writes into OUT_DIR:
  backbone.safetensors  the ViT (official keys, dino-rs metadata)
  input.safetensors     `image` [B, 3, S, S] (already preprocessed: no augmentation) and
                        `label` [B] (int64)
  ref.safetensors       `feat_{n}_{avgpool}` features for (1, 0), (4, 0), (1, 1);
                        per probed recipe (`p{n}_{avgpool}_`): `w0`/`b0` (the classifier's
                        initialisation), `loss` (each step), `lr` (each epoch), `w`/`b` after
                        training, `acc` (top-1, top-5 of the trained probe on the batch)

Training: EPOCHS epochs of two steps (the batch's halves) with SGD(momentum 0.9, weight
decay 0), lr = LR * half / 256 and CosineAnnealingLR(T_max=EPOCHS) stepped per epoch,
cross-entropy, as the official `train()`.

`crop` renders the training transform for each case `{"box": [i, j, h, w], "flip": bool,
"size": S, "mean": [..], "std": [..]}` of CASES.json: `F.resized_crop` (PIL, bilinear: the
default of the official `RandomResizedCrop(224)`), `hflip`, `ToTensor`, `Normalize`; the
crops are `crop_{k}` in OUT.
"""
import json
import sys
from pathlib import Path

import torch
from torch import nn
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
from dino_ref.fixtures import seeded_vit, state, vit_config  # noqa: E402

B, S, CLASSES, EPOCHS, LR = 8, 16, 7, 3, 16.0
SIZES = (16, 4, 2)  # embed_dim, depth, num_heads


def get_intermediate_layers(m, x, n):
    """The normed tokens of the last `n` blocks (official `get_intermediate_layers`)."""
    x = m.prepare_tokens(x)
    out = []
    for i, blk in enumerate(m.blocks):
        x, _ = blk(x)
        if len(m.blocks) - i <= n:
            out.append(m.norm(x))
    return out


def features(m, x, n, avgpool):
    """The official feature vector, cat-then-reshape interleaving included."""
    inter = get_intermediate_layers(m, x, n)
    output = torch.cat([t[:, 0] for t in inter], dim=-1)
    if avgpool:
        output = torch.cat((output.unsqueeze(-1), torch.mean(inter[-1][:, 1:], dim=1).unsqueeze(-1)), dim=-1)
        output = output.reshape(output.shape[0], -1)
    return output


class LinearClassifier(nn.Module):
    def __init__(self, dim, num_labels):
        super().__init__()
        self.linear = nn.Linear(dim, num_labels)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x):
        return self.linear(x.view(x.size(0), -1))


def accuracy(output, target, topk):
    _, pred = output.topk(max(topk), 1, True, True)
    correct = pred.t().eq(target.reshape(1, -1).expand_as(pred.t()))
    return [float(correct[:k].reshape(-1).float().sum(0) * 100.0 / target.size(0)) for k in topk]


def probe(feats, y, tag, out):
    torch.manual_seed(11)
    clf = LinearClassifier(feats.shape[1], CLASSES)
    out[tag + "w0"], out[tag + "b0"] = clf.linear.weight.detach().clone(), clf.linear.bias.detach().clone()
    half = B // 2
    opt = torch.optim.SGD(clf.parameters(), LR * half / 256.0, momentum=0.9, weight_decay=0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS, eta_min=0)
    losses, lrs = [], []
    for _ in range(EPOCHS):
        lrs.append(opt.param_groups[0]["lr"])
        for s in (slice(0, half), slice(half, B)):
            loss = nn.CrossEntropyLoss()(clf(feats[s]), y[s])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
    with torch.no_grad():
        acc = accuracy(clf(feats), y, (1, 5))
    out[tag + "loss"] = torch.tensor(losses, dtype=torch.float64)
    out[tag + "lr"] = torch.tensor(lrs, dtype=torch.float64)
    out[tag + "w"], out[tag + "b"] = clf.linear.weight.detach().clone(), clf.linear.bias.detach().clone()
    out[tag + "acc"] = torch.tensor(acc, dtype=torch.float64)


def crops(image, cases, out):
    from PIL import Image
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    img = Image.open(image).convert("RGB")
    res = {}
    for k, c in enumerate(json.loads(Path(cases).read_text())):
        i, j, h, w = c["box"]
        r = F.resized_crop(img, i, j, h, w, [c["size"]] * 2, InterpolationMode.BILINEAR)
        if c["flip"]:
            r = F.hflip(r)
        res[f"crop_{k}"] = F.normalize(F.to_tensor(r), c["mean"], c["std"]).contiguous()
    save_file(res, out)


def main():
    if sys.argv[1] == "crop":
        return crops(*sys.argv[2:5])
    d = Path(sys.argv[2])
    torch.set_num_threads(2)
    cfg = vit_config("custom", 4, S, SIZES)
    m = seeded_vit(cfg, 5)
    meta = {"dino_rs.format": "dino-rs/1", "dino_rs.kind": "backbone",
            "dino_rs.version": "reference", "dino_rs.vit": json.dumps(cfg)}
    save_file(state(m), str(d / "backbone.safetensors"), metadata=meta)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, 3, S, S, generator=g)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    save_file({"image": x, "label": y}, str(d / "input.safetensors"))
    out = {}
    with torch.no_grad():
        feats = {(n, a): features(m, x, n, a) for n, a in ((1, False), (4, False), (1, True))}
    for (n, a), f in feats.items():
        out[f"feat_{n}_{int(a)}"] = f.contiguous()
    for n, a in ((4, False), (1, True)):
        probe(feats[(n, a)], y, f"p{n}_{int(a)}_", out)
    save_file({k: v.contiguous() for k, v in out.items()}, str(d / "ref.safetensors"))


if __name__ == "__main__":
    main()
