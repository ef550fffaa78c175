"""Reference side of the step-fidelity test of dino-train (`train/tests/step_fidelity.rs`).

    python step_fidelity.py DIR

reads `DIR/inputs.safetensors` (written by the Rust test): the student's initial weights
under their official state-dict keys (`init.backbone.*`, `init.head.*`), the crops of every
step (`global_{it}` `[2b, 3, g, g]`, `local_{it}` `[n*b, 3, l, l]`) and, as JSON metadata
`config`, the configuration in the key names of `dino_ref.train.build` plus `steps`,
`clip_grad` and `freeze_last_layer`. Runs that many iterations of the official
`train_one_epoch` body (`dino_ref.train.train_step`) on CPU in fp32, deterministic on one
thread, and writes `DIR/reference.safetensors`: `loss` (one value per step), the final
`student.*`, `teacher.*` and `center`, with the number of clipped gradients per step as
metadata `clipped`.
"""

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


def main():
    out = Path(sys.argv[1])
    path = out / "inputs.safetensors"
    with safe_open(str(path), "pt") as f:
        cfg = json.loads(f.metadata()["config"])
    inputs = load_file(str(path))
    student, teacher, loss_fn, opt, sched = build(cfg)
    init = {k[len("init."):]: v for k, v in inputs.items() if k.startswith("init.")}
    # strict: every official key present, no extra one.
    student.load_state_dict(init, strict=True)
    teacher.load_state_dict(student.state_dict(), strict=True)

    niter, ncrops, clip = cfg["niter"], cfg["ncrops"], cfg["clip_grad"]
    clipped = []
    losses = []
    for it in range(cfg["steps"]):
        epoch = it // niter
        images = list(inputs[f"global_{it}"].chunk(2))
        if ncrops > 2:
            images += list(inputs[f"local_{it}"].chunk(ncrops - 2))
        norms = []
        loss = train_step(student, teacher, loss_fn, opt, sched, it, epoch, images, clip,
                          cfg["freeze_last_layer"], grad_norms=norms)
        losses.append(loss.reshape(1))
        # How many gradients clip_gradients scaled down (its own test), to show the
        # configuration exercises clipping.
        clipped.append(sum(int(clip / (n + 1e-6) < 1) for n in norms[0]))
    tensors = {"loss": torch.cat(losses), "center": loss_fn.center}
    tensors.update({f"student.{k}": v for k, v in student.state_dict().items()})
    tensors.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(out / "reference.safetensors"),
              metadata={"clipped": json.dumps(clipped), "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
