"""Files of the official DINO scripts, written by PyTorch from dino-rs tensors, for the
`dino-train knn` tests (tests/tests/knn_cli.rs).

official-checkpoint: a training `checkpoint.pth` as main_dino.py saves it
    ({'teacher': state_dict, 'student': state_dict, 'epoch': n}, with the heads and the
    `backbone.` / `module.backbone.` prefixes of an unwrapped and a DDP-wrapped network),
    whose teacher is the given dino-rs backbone and whose student is that backbone plus
    seeded noise; the student alone is also written as official-key safetensors.
official-dump: the four files of eval_knn.py --dump_features (torch.save of the
    L2-normalised features and the int64 labels) from a dino-rs knn_features.safetensors.
"""

import argparse
import os

import torch
from safetensors.torch import load_file, save_file


def official_checkpoint(a):
    teacher = load_file(a.teacher)
    g = torch.Generator().manual_seed(a.seed)
    student = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in teacher.items()}
    dim = teacher["cls_token"].shape[-1]
    head = {
        "head.mlp.0.weight": torch.randn(64, dim, generator=g),
        "head.mlp.0.bias": torch.zeros(64),
        "head.last_layer.weight_g": torch.ones(256, 1),
        "head.last_layer.weight_v": torch.randn(256, 64, generator=g),
    }
    ckpt = {
        # main_dino.py keeps the teacher unwrapped on one GPU, the student in DDP.
        "teacher": {**{"backbone." + k: v for k, v in teacher.items()}, **head},
        "student": {
            **{"module.backbone." + k: v for k, v in student.items()},
            **{"module." + k: v for k, v in head.items()},
        },
        "epoch": 3,
    }
    torch.save(ckpt, a.out)
    save_file({k: v.contiguous() for k, v in student.items()}, a.student_out)


def official_dump(a):
    f = load_file(a.features)
    os.makedirs(a.out, exist_ok=True)
    for name, key in [
        ("trainfeat.pth", "train_features"),
        ("testfeat.pth", "test_features"),
        ("trainlabels.pth", "train_labels"),
        ("testlabels.pth", "test_labels"),
    ]:
        t = f[key]
        assert t.dtype in (torch.float32, torch.int64), (key, t.dtype)
        torch.save(t.clone(), os.path.join(a.out, name))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("official-checkpoint")
    c.add_argument("--teacher", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--student-out", required=True)
    c.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("official-dump")
    d.add_argument("--features", required=True)
    d.add_argument("--out", required=True)
    a = p.parse_args()
    {"official-checkpoint": official_checkpoint, "official-dump": official_dump}[a.cmd](a)


if __name__ == "__main__":
    main()
