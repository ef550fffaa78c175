"""PyTorch references of DINO (Caron et al., 2021), written after the official
facebookresearch/dino code, that the tests and benchmarks check dino-rs against.

  vit         `vision_transformer.py`: the ViT (attention, drop-path, `interpolate_pos_encoding`)
  head        `vision_transformer.DINOHead`, `utils.MultiCropWrapper`
  utils       `utils.py`: cosine schedules, parameter groups, gradient clipping, LARS
  train       `main_dino.py`: `DINOLoss`, the setup of `train_dino`, one `train_one_epoch` step
  transforms  `eval_knn.py` eval transform, `main_dino.DataAugmentationDINO`
  fixtures    seeded weights, the `dino_rs.vit` metadata dict, timm's ViT from that dict

Plain PyTorch (torchvision and timm where named): nothing here reads dino-rs code, so the
references stay independent of what they check. Scripts put this folder (`python/`) on
`sys.path` from their own location.
"""
