//! Vision Transformer backbone of DINO (Caron et al., "Emerging Properties in
//! Self-Supervised Vision Transformers", ICCV 2021), after Dosovitskiy et al. 2021.
//!
//! Mirrors the official `vision_transformer.py`: conv patch embedding, CLS token, learned
//! position embedding interpolated to other input sizes with the official formula,
//! pre-norm blocks, final LayerNorm. Var paths equal the official weight keys
//! (`blocks.3.attn.qkv.weight`), so released checkpoints load without renaming.

use dino_core::VitConfig;
use dino_core::pos_embed::official_scale;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::init::{layer_norm, linear, torch_default_uniform, trunc_normal_};

/// `x + drop_path(y)`: stochastic depth drops the residual branch `y` per sample with
/// probability `p`, scaling the kept ones by 1/(1-p) so the expectation is unchanged. The
/// mask is drawn as the official `drop_path` draws it (`floor(keep + rand)` in `y`'s dtype);
/// the scale and the sum are one `addcmul` pass instead of a division, a product and a sum.
fn add_residual(x: &Tensor, y: &Tensor, p: f64, train: bool) -> Tensor {
    if p == 0.0 || !train {
        return x + y;
    }
    let keep = 1.0 - p;
    let b = y.size()[0];
    // [b, 1, 1], 0 or 1/keep, in fp32 so the scale is exact to fp32 in reduced precision too.
    let mask = (Tensor::rand([b, 1, 1], (y.kind(), y.device())) + keep)
        .floor()
        .to_kind(Kind::Float)
        / keep;
    x.addcmul(y, &mask)
}

/// `[b, 3, h, w]` -> `[b, h/p * w/p, d]` by a stride-p convolution.
#[derive(Debug)]
pub struct PatchEmbed {
    proj: nn::Conv2D,
}

impl PatchEmbed {
    fn new(p: nn::Path, cfg: &VitConfig) -> Self {
        let (c, d, k) = (
            cfg.in_chans as i64,
            cfg.embed_dim as i64,
            cfg.patch_size as i64,
        );
        let fan_in = c * k * k;
        let conv = nn::ConvConfig {
            stride: k,
            ws_init: torch_default_uniform(fan_in),
            bs_init: torch_default_uniform(fan_in),
            ..Default::default()
        };
        Self {
            proj: nn::conv2d(p / "proj", c, d, k, conv),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        // [b, d, h/p, w/p] -> [b, n, d]
        self.proj.forward(x).flatten(2, -1).transpose(1, 2)
    }
}

/// Multi-head self-attention with a fused qkv projection.
#[derive(Debug)]
pub struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    num_heads: i64,
    scale: f64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &VitConfig) -> Self {
        let d = cfg.embed_dim as i64;
        Self {
            qkv: linear(&p / "qkv", d, 3 * d, cfg.qkv_bias),
            proj: linear(&p / "proj", d, d, true),
            num_heads: cfg.num_heads as i64,
            scale: (cfg.head_dim() as f64).powf(-0.5),
        }
    }

    /// `[b, n, d]` -> `([b, n, d], attention [b, heads, n, n] when asked for)`.
    fn forward(&self, x: &Tensor, with_attention: bool) -> (Tensor, Option<Tensor>) {
        let (b, n, d) = x.size3().expect("attention input is [b, n, d]");
        // [3, b, heads, n, d/heads]
        let qkv = self
            .qkv
            .forward(x)
            .reshape([b, n, 3, self.num_heads, d / self.num_heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        // On CPU the explicit form is also the faster one for the short sequences of DINO's
        // crops (65 and 17 tokens; BENCHMARKS.md, "CPU training step"); on CUDA the fused
        // kernel.
        let explicit = with_attention || x.device() == tch::Device::Cpu;
        let (out, attn) = if explicit {
            // softmax(q k^T / sqrt(d_head)): the maps are an output when asked for.
            let attn = (q.matmul(&k.transpose(-2, -1)) * self.scale).softmax(-1, Kind::Float);
            let attn = attn.to_kind(v.kind());
            let out = attn.matmul(&v);
            (out, with_attention.then_some(attn))
        } else {
            // Fused kernel (flash / memory-efficient on CUDA); same math.
            let o = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                false,
                self.scale,
                false,
            );
            (o, None)
        };
        // [b, heads, n, d/heads] -> [b, n, d]
        let out = out.transpose(1, 2).reshape([b, n, d]);
        (self.proj.forward(&out), attn)
    }
}

/// Two-layer GELU MLP of the transformer block.
#[derive(Debug)]
pub struct Mlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Mlp {
    fn new(p: nn::Path, cfg: &VitConfig) -> Self {
        let (d, h) = (cfg.embed_dim as i64, cfg.mlp_hidden() as i64);
        Self {
            fc1: linear(&p / "fc1", d, h, true),
            fc2: linear(&p / "fc2", h, d, true),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).gelu("none"))
    }
}

/// Pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug)]
pub struct Block {
    norm1: nn::LayerNorm,
    attn: Attention,
    norm2: nn::LayerNorm,
    mlp: Mlp,
    drop_path: f64,
}

impl Block {
    pub fn new(p: nn::Path, cfg: &VitConfig, drop_path: f64) -> Self {
        let d = cfg.embed_dim as i64;
        Self {
            norm1: layer_norm(&p / "norm1", d, cfg.layer_norm_eps),
            attn: Attention::new(&p / "attn", cfg),
            norm2: layer_norm(&p / "norm2", d, cfg.layer_norm_eps),
            mlp: Mlp::new(&p / "mlp", cfg),
            drop_path,
        }
    }

    /// `[b, n, d]` -> `[b, n, d]`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let (y, _) = self.attn.forward(&self.norm1.forward(x), false);
        let x = add_residual(x, &y, self.drop_path, train);
        let y = self.mlp.forward(&self.norm2.forward(&x));
        add_residual(&x, &y, self.drop_path, train)
    }

    /// The block's self-attention `[b, heads, n, n]` (the official `return_attention`).
    pub fn attention(&self, x: &Tensor) -> Tensor {
        let (_, attn) = self.attn.forward(&self.norm1.forward(x), true);
        attn.expect("attention requested")
    }
}

/// The DINO ViT backbone.
#[derive(Debug)]
pub struct VisionTransformer {
    pub cfg: VitConfig,
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    patch_embed: PatchEmbed,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

impl VisionTransformer {
    /// Creates the parameters under `p` with the official initialisation.
    pub fn new(p: &nn::Path, cfg: &VitConfig) -> Self {
        let d = cfg.embed_dim as i64;
        let mut cls_token = p.var("cls_token", &[1, 1, d], nn::Init::Const(0.0));
        let mut pos_embed = p.var(
            "pos_embed",
            &[1, cfg.num_tokens() as i64, d],
            nn::Init::Const(0.0),
        );
        trunc_normal_(&mut pos_embed, 0.02);
        trunc_normal_(&mut cls_token, 0.02);
        let patch_embed = PatchEmbed::new(p / "patch_embed", cfg);
        let blocks = (0..cfg.depth)
            .map(|i| Block::new(p / "blocks" / i, cfg, cfg.drop_path_at(i)))
            .collect();
        Self {
            cfg: cfg.clone(),
            cls_token,
            pos_embed,
            patch_embed,
            blocks,
            norm: layer_norm(p / "norm", d, cfg.layer_norm_eps),
        }
    }

    /// The position embedding for an `h x w` input: the official `interpolate_pos_encoding`
    /// (bicubic with `scale_factor = (grid_out + 0.1) / grid`), `[1, 1 + n, d]`.
    pub fn interpolate_pos_encoding(&self, h: i64, w: i64) -> Tensor {
        let p = self.cfg.patch_size as i64;
        let (h0, w0) = (h / p, w / p);
        let n = self.pos_embed.size()[1] - 1;
        if h0 * w0 == n && h == w {
            return self.pos_embed.shallow_clone();
        }
        let g = (n as f64).sqrt() as i64;
        let d = self.cfg.embed_dim as i64;
        let cls = self.pos_embed.narrow(1, 0, 1);
        // [1, n, d] -> [1, d, g, g]
        let grid = self
            .pos_embed
            .narrow(1, 1, n)
            .reshape([1, g, g, d])
            .permute([0, 3, 1, 2]);
        let sh = official_scale(h0 as usize, g as usize);
        let sw = official_scale(w0 as usize, g as usize);
        let grid = grid.upsample_bicubic2d([h0, w0], false, sh, sw);
        // [1, d, h0, w0] -> [1, h0*w0, d]
        let grid = grid.permute([0, 2, 3, 1]).reshape([1, h0 * w0, d]);
        Tensor::cat(&[cls, grid], 1)
    }

    /// `[b, 3, h, w]` -> tokens `[b, 1 + n, d]` with position embedding added.
    pub fn prepare_tokens(&self, x: &Tensor) -> Tensor {
        let (b, _, h, w) = x.size4().expect("image batch is [b, c, h, w]");
        let patches = self.patch_embed.forward(x); // [b, n, d]
        let cls = self
            .cls_token
            .expand([b, -1, -1], false)
            .to_kind(patches.kind());
        let tokens = Tensor::cat(&[cls, patches], 1); // [b, 1 + n, d]
        tokens + self.interpolate_pos_encoding(h, w)
    }

    /// All tokens after the final norm, `[b, 1 + n, d]`.
    pub fn forward_tokens(&self, x: &Tensor, train: bool) -> Tensor {
        let mut x = self.prepare_tokens(x);
        for blk in &self.blocks {
            x = blk.forward(&x, train);
        }
        self.norm.forward(&x)
    }

    /// The normed CLS token `[b, d]`: the DINO feature.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        self.forward_tokens(x, train).select(1, 0)
    }

    /// Inference forward (no stochastic depth).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_t(x, false)
    }

    /// Self-attention of the last block, `[b, heads, 1 + n, 1 + n]`.
    pub fn get_last_selfattention(&self, x: &Tensor) -> Tensor {
        let mut x = self.prepare_tokens(x);
        let (last, rest) = self.blocks.split_last().expect("depth >= 1");
        for blk in rest {
            x = blk.forward(&x, false);
        }
        last.attention(&x)
    }

    /// The normed tokens `[b, 1 + n, d]` of each of the last `n` blocks, oldest first.
    pub fn get_intermediate_layers(&self, x: &Tensor, n: usize) -> Vec<Tensor> {
        let mut x = self.prepare_tokens(x);
        let first_kept = self.blocks.len().saturating_sub(n);
        let mut out = Vec::with_capacity(n);
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x, false);
            if i >= first_kept {
                out.push(self.norm.forward(&x));
            }
        }
        out
    }
}
