//! Student and teacher networks: backbone + DINO head, as the official
//! `MultiCropWrapper`.
//!
//! Crops of one resolution go through the backbone in one batch (two forwards per step
//! for the student: globals, locals), then the head sees all CLS features at once. Var
//! names are `backbone.*` and `head.*`, the official state-dict keys.

use std::rc::Rc;

use dino_core::{HeadConfig, VitConfig};
use dino_models::{BatchStatsSync, DinoHead, ModelError, VisionTransformer};
use tch::{Device, Tensor, nn};

pub struct DinoNet {
    pub vs: nn::VarStore,
    pub backbone: VisionTransformer,
    pub head: DinoHead,
}

impl DinoNet {
    pub fn new(vit: &VitConfig, head: &HeadConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let backbone = VisionTransformer::new(&(&root / "backbone"), vit);
        let head = DinoHead::new(&(&root / "head"), head);
        Self { vs, backbone, head }
    }

    /// The official teacher: the student's architecture without stochastic depth, starting
    /// from the student's weights, never trained by gradients.
    pub fn teacher_of(student: &DinoNet, device: Device) -> Self {
        let mut vit = student.backbone.cfg.clone();
        vit.drop_path_rate = 0.0;
        let mut teacher = Self::new(&vit, &student.head.cfg, device);
        tch::no_grad(|| {
            let src = student.vs.variables();
            for (name, mut dst) in teacher.vs.variables() {
                dst.copy_(&src[&name]);
            }
        });
        teacher.vs.freeze();
        teacher
    }

    /// Logits for crop groups `[k_i * b, 3, s_i, s_i]` (one group per resolution),
    /// concatenated in group order: `[sum k_i * b, out_dim]`. Fails only when the head's
    /// BatchNorm statistics are summed over processes.
    pub fn forward_crops(&self, groups: &[&Tensor], train: bool) -> Result<Tensor, ModelError> {
        let feats: Vec<Tensor> = groups
            .iter()
            .map(|x| self.backbone.forward_t(x, train)) // [k_i * b, d]
            .collect();
        self.head.f_forward_t(&Tensor::cat(&feats, 0), train)
    }

    /// The head's BatchNorm layers normalise over every process's batch (SyncBatchNorm).
    pub fn sync_batch_stats(&mut self, sync: Rc<dyn BatchStatsSync>) {
        self.head.set_batch_stats_sync(Some(sync));
    }

    /// Names and tensors of every trainable parameter, sorted by name (a stable order for
    /// optimizer state and gradient clipping).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every parameter the official EMA averages (`parameters()`: the frozen `weight_g`
    /// included, BatchNorm running statistics excluded), sorted by name.
    pub fn trainable_and_frozen(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(k, _)| !k.contains(".running_"))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}
