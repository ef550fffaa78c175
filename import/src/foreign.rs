//! Official DINO weights into dino-rs: `.pth` backbone state dicts
//! (`dino_deitsmall16_pretrain.pth`), training `checkpoint.pth` files (the `teacher`
//! entry, keys prefixed `backbone.`/`head.`, optionally `module.`), and foreign
//! safetensors files with official key names. The architecture is read off the tensor
//! shapes and checked against `--arch`/`--patch-size` when given, because official files
//! carry no config of their own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dino_core::st::{self, RawTensor, StFile};
use dino_core::weights::{backbone_shapes, check_shapes};
use dino_core::{CoreError, HeadConfig, VitConfig};
use safetensors::tensor::Dtype;

use crate::error::ImportError;
use crate::format::{Format, unknown_format};
use crate::head::{infer_head, split_head};
use crate::pth::{self, PthFile};

/// How to read a foreign file. With the `clap` feature these are the `import` flags of
/// both binaries (the field docs are their help). Without `key`, the weights are the
/// `teacher` entry if present, then `state_dict`, `model`, else the whole file.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct ImportOptions {
    /// Architecture preset (vit_tiny, vit_small, vit_base); default: from the width.
    #[cfg_attr(feature = "clap", arg(long))]
    pub arch: Option<String>,
    /// Patch size, checked against the weights.
    #[cfg_attr(feature = "clap", arg(long))]
    pub patch_size: Option<usize>,
    /// The checkpoint entry holding the weights (e.g. `teacher`, `student`).
    #[cfg_attr(feature = "clap", arg(long))]
    pub key: Option<String>,
    /// Keep the DINO projection head (`head.*`) too, its config read off the shapes
    /// (to continue training from it, or to look at its prototypes).
    #[cfg_attr(feature = "clap", arg(long))]
    pub with_head: bool,
    /// Attention heads of a backbone whose width is no preset's (official files do not
    /// record them); the trainer gives its configuration's.
    #[cfg_attr(feature = "clap", arg(skip))]
    pub num_heads: Option<usize>,
}

/// A backbone read from a foreign file, ready to be written or exported.
pub struct Imported {
    pub path: PathBuf,
    pub vit: VitConfig,
    pub tensors: BTreeMap<String, RawTensor>,
    /// The DINO head kept with `with_head` (its tensors are the `head.*` keys).
    pub head: Option<HeadConfig>,
    /// The checkpoint entry the weights came from, if not the whole file.
    pub entry: Option<String>,
    /// Keys dropped on purpose (the DINO projection head, without `with_head`).
    pub ignored: Vec<String>,
}

/// Converts `from` (`.pth` or foreign `.safetensors`) to a dino-rs backbone file `to`.
pub fn import(from: &Path, to: &Path, opts: &ImportOptions) -> Result<Imported, ImportError> {
    st::ensure_distinct(from, to)?;
    let imported = read_foreign(from, opts)?;
    let meta = st::backbone_metadata(
        &imported.vit,
        imported.head.as_ref(),
        None,
        st::KIND_BACKBONE,
    );
    st::write_atomic(to, &imported.tensors, meta)?;
    Ok(imported)
}

/// Materialises one tensor by its name in the file.
type Fetch = Box<dyn FnMut(&str) -> Result<RawTensor, ImportError>>;

/// Reads and checks the backbone of a foreign checkpoint.
pub fn read_foreign(path: &Path, opts: &ImportOptions) -> Result<Imported, ImportError> {
    let (entry, names, fetch) = open_tensors(path, opts)?;
    if names.is_empty() {
        return Err(ImportError::NoTensors {
            path: path.to_path_buf(),
            entry,
        });
    }
    let (tensors, ignored) = official_keys(path, names, fetch, opts.with_head)?;
    let (head_tensors, mut tensors) = split_head(tensors);
    let vit = checked_config(path, &tensors, opts)?;
    let head = match opts.with_head {
        true => Some(infer_head(path, &head_tensors)?),
        false => None,
    };
    if let Some(h) = head.as_ref().filter(|h| h.in_dim != vit.embed_dim) {
        return Err(ImportError::weights(
            path,
            format!(
                "the head takes {}-wide features, the backbone gives {}",
                h.in_dim, vit.embed_dim
            ),
        ));
    }
    tensors.extend(
        head_tensors
            .into_iter()
            .map(|(k, v)| (format!("head.{k}"), v)),
    );
    Ok(Imported {
        path: path.to_path_buf(),
        vit,
        tensors,
        head,
        entry,
        ignored,
    })
}

/// The checkpoint entry read (a `.pth` dict key), its tensor names, and their reader.
fn open_tensors(
    path: &Path,
    opts: &ImportOptions,
) -> Result<(Option<String>, Vec<String>, Fetch), ImportError> {
    match Format::detect(path)? {
        Format::Pth => {
            let mut f = PthFile::open(path)?;
            let (entry, value) = pick_entry(&f, opts.key.as_deref())?;
            let refs = pth::tensors_in(&value);
            let names = refs.keys().cloned().collect();
            let fetch = move |k: &str| f.tensor(k, &refs[k]);
            Ok((entry, names, Box::new(fetch)))
        }
        Format::LegacyPth => Err(ImportError::pth(
            path,
            "legacy (pre-1.6) torch.save format; re-save it with `torch.save(torch.load(f), f)` in any recent PyTorch",
        )),
        Format::Safetensors => {
            let f = StFile::read(path)?;
            let names = f.tensors.keys().cloned().collect();
            let fetch = move |k: &str| Ok(f.tensors[k].clone());
            Ok((None, names, Box::new(fetch)))
        }
        Format::Unknown => Err(unknown_format(path)),
    }
}

/// The tensors as float32 under official keys, without DDP's `module.` and
/// MultiCropWrapper's `backbone.` prefixes; the names of the head's tensors are returned
/// apart, unread, unless `with_head`.
fn official_keys(
    path: &Path,
    names: Vec<String>,
    mut fetch: Fetch,
    with_head: bool,
) -> Result<(BTreeMap<String, RawTensor>, Vec<String>), ImportError> {
    let mut tensors = BTreeMap::new();
    let mut ignored = Vec::new();
    for name in names {
        let mut k = name.as_str();
        while let Some(rest) = k
            .strip_prefix("module.")
            .or_else(|| k.strip_prefix("backbone."))
        {
            k = rest;
        }
        if k.starts_with("head.") && !with_head {
            ignored.push(name.clone());
            continue;
        }
        tensors.insert(k.to_string(), as_f32(path, &name, fetch(&name)?)?);
    }
    Ok((tensors, ignored))
}

/// Float tensors are stored as float32, whatever the file held (fp16 and bf16 releases).
pub(crate) fn as_f32(path: &Path, name: &str, t: RawTensor) -> Result<RawTensor, ImportError> {
    if matches!(t.dtype, Dtype::F64 | Dtype::F16 | Dtype::BF16) {
        let values = t.to_f32(path, name)?;
        return Ok(RawTensor::from_f32(t.shape, &values));
    }
    Ok(t)
}

fn pick_entry(
    f: &PthFile,
    key: Option<&str>,
) -> Result<(Option<String>, pth::pickle::Value), ImportError> {
    if let Some(k) = key {
        return pth::dict_entry(&f.root, k)
            .map(|v| (Some(k.to_string()), v))
            .ok_or_else(|| ImportError::NoEntry {
                path: f.path.clone(),
                key: k.to_string(),
                found: pth::dict_keys(&f.root),
            });
    }
    for k in ["teacher", "state_dict", "model"] {
        if let Some(v) = pth::dict_entry(&f.root, k) {
            return Ok((Some(k.to_string()), v));
        }
    }
    Ok((None, f.root.clone()))
}

/// The backbone architecture official-key tensors describe (the preset of their width,
/// else custom with `num_heads`), every tensor checked against it.
pub fn infer_vit(
    path: &Path,
    t: &BTreeMap<String, RawTensor>,
    num_heads: Option<usize>,
) -> Result<VitConfig, ImportError> {
    let opts = ImportOptions {
        num_heads,
        ..ImportOptions::default()
    };
    checked_config(path, t, &opts)
}

/// [`infer_config`], then every tensor's shape checked against it.
fn checked_config(
    path: &Path,
    t: &BTreeMap<String, RawTensor>,
    opts: &ImportOptions,
) -> Result<VitConfig, ImportError> {
    let vit = infer_config(path, t, opts)?;
    let found = t
        .iter()
        .map(|(k, v)| (k.clone(), v.shape.clone()))
        .collect();
    check_shapes(path, &backbone_shapes(&vit), &found)?;
    Ok(vit)
}

/// The architecture the tensors describe, checked against the user's `--arch`/`--patch-size`.
fn infer_config(
    path: &Path,
    t: &BTreeMap<String, RawTensor>,
    opts: &ImportOptions,
) -> Result<VitConfig, ImportError> {
    let bad = |why: String| ImportError::weights(path, why);
    let shape = |k: &str| -> Result<&[usize], ImportError> {
        t.get(k).map(|x| x.shape.as_slice()).ok_or_else(|| {
            let mut keys: Vec<_> = t.keys().take(8).cloned().collect();
            if t.len() > 8 {
                keys.push("...".into());
            }
            bad(format!(
                "not a DINO ViT backbone: missing key `{k}` (found: {})",
                keys.join(", ")
            ))
        })
    };
    let pe = shape("patch_embed.proj.weight")?;
    let [d, in_chans, p, p2] = *pe else {
        return Err(bad(format!(
            "`patch_embed.proj.weight` has shape {pe:?}, expected [D, C, p, p]"
        )));
    };
    if p != p2 {
        return Err(bad(format!(
            "non-square patches {p}x{p2} are not supported"
        )));
    }
    let pos = shape("pos_embed")?;
    let tokens = if pos.len() == 3 { pos[1] } else { 0 };
    let grid = ((tokens.saturating_sub(1)) as f64).sqrt() as usize;
    if tokens < 2 || grid * grid + 1 != tokens {
        return Err(bad(format!(
            "`pos_embed` has shape {pos:?}, expected [1, 1 + g*g, D]"
        )));
    }
    let depth = (0..)
        .take_while(|i| t.contains_key(&format!("blocks.{i}.norm1.weight")))
        .count();
    let fc1 = shape("blocks.0.mlp.fc1.weight")?;
    let mut cfg = choose_arch(path, opts, p, d, depth)?;
    cfg.img_size = grid * p;
    cfg.in_chans = in_chans;
    cfg.mlp_ratio = fc1[0] as f64 / d as f64;
    cfg.qkv_bias = t.contains_key("blocks.0.attn.qkv.bias");
    cfg.validate().map_err(|e: CoreError| bad(e.to_string()))?;
    Ok(cfg)
}

/// The preset (or custom architecture) of width `d`, `depth` blocks and patch `p`, as
/// the user's `--arch`, `--patch-size` and `--num-heads` allow; else why not.
fn choose_arch(
    path: &Path,
    opts: &ImportOptions,
    p: usize,
    d: usize,
    depth: usize,
) -> Result<VitConfig, ImportError> {
    let bad = |why: String| ImportError::weights(path, why);
    let preset = match &opts.arch {
        Some(a) => Some(VitConfig::preset(a, p)?),
        None => dino_core::config::PRESETS
            .iter()
            .find(|x| x.1 == d && x.3 > 0)
            .map(|x| VitConfig::preset(x.0, p))
            .transpose()?,
    };
    let cfg = match (preset, opts.num_heads) {
        (Some(c), _) if c.embed_dim == d && c.depth == depth => c,
        // Not a preset: custom widths, with the heads the caller knows.
        (_, Some(heads)) if opts.arch.is_none() => VitConfig::new("custom", p, d, depth, heads),
        (None, _) => {
            return Err(bad(format!(
                "embedding width {d} matches no preset (vit_tiny 192, vit_small 384, vit_base 768); pass --arch"
            )));
        }
        (Some(c), _) => {
            return Err(bad(format!(
                "--arch {} means embed_dim {} and depth {}, but the weights have embed_dim {d} and depth {depth}",
                c.arch, c.embed_dim, c.depth
            )));
        }
    };
    if let Some(want) = opts.patch_size
        && want != p
    {
        return Err(bad(format!(
            "--patch-size {want} given, but the weights have patch size {p}"
        )));
    }
    Ok(cfg)
}
