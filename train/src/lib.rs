//! dino-train: DINO self-distillation (Caron et al., "Emerging Properties in
//! Self-Supervised Vision Transformers", ICCV 2021) on libtorch.
