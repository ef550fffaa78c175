"""Reference side of `train/tests/init_from.rs`: an official DINO training checkpoint and the
first training step continued from it.

    python init_from.py DIR

reads `DIR/inputs.safetensors` (written by the Rust test): the crops of one step (`global_0`
`[2b, 3, g, g]`, `local_0` `[n*b, 3, l, l]`) and, as JSON metadata `config`, the configuration
in the key names of `dino_ref.train.build` plus `clip_grad`, `freeze_last_layer` and `seed`.

Builds student and teacher as `main_dino.py` does (`MultiCropWrapper` of the official ViT and
`DINOHead`), moves them apart from each other and from a fresh start (seeded noise on every
parameter, the teacher differently from the student, a non-zero centre: the state of a run
part-way through), and saves `DIR/checkpoint.pth` with `torch.save` in the layout of
`main_dino.py`'s `save_dict`: `student` (a DDP state dict, keys under `module.`), `teacher`
(`backbone.*`, `head.*`), `optimizer`, `epoch`, `args` (an `argparse.Namespace`) and
`dino_loss` (`center`). Then runs one `train_one_epoch` iteration (`dino_ref.train.train_step`,
iteration 0 of epoch 0: a new run with a fresh optimizer) from that state on the crops, on
CPU in fp32, and writes `DIR/reference.safetensors`: `loss`, and the `student.*`, `teacher.*`
and `center` after the step.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "python"))
from dino_ref.train import build, train_step  # noqa: E402

torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


def move_apart(student, teacher, loss_fn, seed):
    """A state part-way through training: student, teacher and centre all different."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            pt.copy_(ps + 0.05 * torch.randn(ps.shape, generator=g))
        loss_fn.center = 0.5 * torch.randn(loss_fn.center.shape, generator=g)


def main():
    out = Path(sys.argv[1])
    path = out / "inputs.safetensors"
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    inputs = load_file(str(path))
    torch.manual_seed(cfg["seed"])
    student, teacher, loss_fn, opt, sched = build(cfg)
    move_apart(student, teacher, loss_fn, cfg["seed"] + 1)

    save_dict = {
        "student": {f"module.{k}": v for k, v in student.state_dict().items()},
        "teacher": teacher.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 37,
        "args": argparse.Namespace(arch="custom", patch_size=cfg["patch"], out_dim=cfg["out_dim"]),
        "dino_loss": loss_fn.state_dict(),
    }
    torch.save(save_dict, out / "checkpoint.pth")

    ncrops = cfg["ncrops"]
    images = list(inputs["global_0"].chunk(2))
    if ncrops > 2:
        images += list(inputs["local_0"].chunk(ncrops - 2))
    loss = train_step(student, teacher, loss_fn, opt, sched, 0, 0, images, cfg["clip_grad"],
                      cfg["freeze_last_layer"])
    tensors = {"loss": loss.reshape(1), "center": loss_fn.center}
    tensors.update({f"student.{k}": v for k, v in student.state_dict().items()})
    tensors.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "reference.safetensors"), metadata={"torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
