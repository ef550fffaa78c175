"""An official DINO training checkpoint for the `tests/tests/train_init.rs` tests.

    python dino_checkpoint.py OUT_DIR DIM DEPTH HEADS PATCH IMG OUT_DIM HIDDEN BOTTLENECK USE_BN

builds student and teacher as `main_dino.py` does (`MultiCropWrapper` of `dino_ref`'s ViT and
`DINOHead`, `use_bn_in_head` = USE_BN (0/1), `norm_last_layer` false), seeded, moves every
parameter and BatchNorm statistic off its initial value (a run part-way through), and saves:

- `OUT_DIR/checkpoint.pth`: `torch.save` of `main_dino.py`'s `save_dict` (`student` under DDP's
  `module.`, `teacher`, `optimizer`, `epoch`, `args` as an `argparse.Namespace`, `dino_loss`);
- `OUT_DIR/teacher.safetensors`: the teacher's state dict, `backbone.` taken off the backbone
  keys (what `import --with-head` must write), and `center`.
"""

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python"))
from dino_ref.head import DINOHead, MultiCropWrapper  # noqa: E402
from dino_ref.vit import VisionTransformer  # noqa: E402


def main():
    out = Path(sys.argv[1])
    dim, depth, heads, patch, img, out_dim, hidden, bottleneck, use_bn = (int(v) for v in sys.argv[2:11])
    torch.manual_seed(5)

    def net():
        backbone = VisionTransformer(img_size=img, patch_size=patch, embed_dim=dim, depth=depth,
                                     num_heads=heads)
        head = DINOHead(dim, out_dim, use_bn=bool(use_bn), norm_last_layer=False, hidden_dim=hidden,
                        bottleneck_dim=bottleneck)
        return MultiCropWrapper(backbone, head)

    student, teacher = net(), net()
    with torch.no_grad():
        for m in (student, teacher):
            for k, v in m.state_dict().items():
                if v.is_floating_point():
                    v.add_(0.1 * torch.randn_like(v))
                    if k.endswith("running_var"):
                        v.abs_()
    opt = torch.optim.AdamW(student.parameters())
    loss_center = {"center": torch.randn(1, out_dim)}
    save_dict = {
        "student": {f"module.{k}": v for k, v in student.state_dict().items()},
        "teacher": teacher.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 12,
        "args": argparse.Namespace(arch="vit_small", patch_size=patch, out_dim=out_dim),
        "dino_loss": loss_center,
    }
    torch.save(save_dict, out / "checkpoint.pth")
    tensors = {k.removeprefix("backbone."): v for k, v in teacher.state_dict().items()}
    tensors["center"] = loss_center["center"]
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()
               if not k.endswith("num_batches_tracked")}
    save_file(tensors, str(out / "teacher.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
