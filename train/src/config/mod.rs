//! Training configuration: the official `main_dino.py` options, from a TOML file and
//! command-line flags of the same names (`--momentum_teacher 0.99`).
//!
//! Precedence: built-in defaults (the official ones), then the TOML file, then flags.
//! Unknown keys are errors in both places. Each option's key, type, default and help are
//! written once, in the option table ([`options`]); the sub-configs it declares are what the
//! algorithm modules take, and the flags and `--help` are generated from it.

mod official;
mod options;
mod value;

use std::path::{Path, PathBuf};

use dino_core::{CoreError, EvalTransform, HeadConfig, VitConfig};
use serde::{Deserialize, Deserializer, Serialize};

use crate::data::DataError;
pub use official::{OFFICIAL_FLAGS, OfficialFlag, official_flag, unsupported_arch};
pub use options::{
    Arch, AugmentConfig, InitConfig, KnnConfig, ModelConfig, OptimConfig, RunConfig, TeacherConfig,
};
pub use value::{ChoiceError, FlagError, OptionInfo, OptionType, ValueKind, bool_flag, flag_text};

/// Every training option, by section. The file and `--print-config` are flat: each
/// section's keys sit at the top level (the sections are flattened).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrainConfig {
    #[serde(flatten)]
    pub model: ModelConfig,
    #[serde(flatten)]
    pub init: InitConfig,
    #[serde(flatten)]
    pub teacher: TeacherConfig,
    #[serde(flatten)]
    pub optim: OptimConfig,
    #[serde(flatten)]
    pub augment: AugmentConfig,
    #[serde(flatten)]
    pub run: RunConfig,
    #[serde(flatten)]
    pub knn: KnnConfig,
}

/// What can be wrong with a configuration; each error names the file (or the command line)
/// and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not valid TOML: {error}", path.display())]
    Toml {
        path: PathBuf,
        error: toml::de::Error,
    },
    #[error("{origin}: unknown option `{key}`")]
    UnknownKey { origin: String, key: String },
    #[error(transparent)]
    Flag(#[from] FlagError),
    /// A value of the wrong type (toml's message names the key).
    #[error("invalid configuration ({origin}): {error}")]
    Value {
        origin: String,
        error: toml::de::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Augment(#[from] DataError),
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// The option table: every option in file order.
pub fn options() -> impl Iterator<Item = &'static OptionInfo> {
    options::SECTIONS.into_iter().flatten()
}

/// The row of `key`, if it is an option.
pub fn option(key: &str) -> Option<&'static OptionInfo> {
    options().find(|o| o.key == key)
}

/// Other names of options, as `main_dino.py` spells them: `(alias, key)`.
pub const ALIASES: &[(&str, &str)] = &[("batch_size_per_gpu", "batch_size")];

/// The option key an alias stands for (the key itself otherwise).
pub fn canonical(key: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key, |(_, k)| k)
}

/// Renames aliased keys of a file's table and translates the official-only ones
/// (`use_fp16`); an option given under two names is an error.
fn unalias(table: toml::Table, origin: &str) -> Result<toml::Table, ConfigError> {
    let mut out = toml::Table::new();
    for (key, value) in table {
        let (k, value) = if official_flag(&key).is_some() {
            match official::translate(origin, &key, &flag_text(&value))? {
                Some((k, text)) => (k.to_string(), option_value(k, &text)?),
                None => continue,
            }
        } else {
            (canonical(&key).to_string(), value)
        };
        if out.insert(k.clone(), value).is_some() {
            return Err(ConfigError::Invalid(format!(
                "{origin}: `{k}` is given twice (as `{key}` too)"
            )));
        }
    }
    Ok(out)
}

/// The TOML value of option `key` given as flag text.
fn option_value(key: &str, text: &str) -> Result<toml::Value, ConfigError> {
    let info = option(key).ok_or_else(|| ConfigError::UnknownKey {
        origin: "command line".into(),
        key: key.to_string(),
    })?;
    Ok(info.kind.parse(key, text)?)
}

impl TrainConfig {
    /// Defaults, overlaid by the TOML file (if any), overlaid by `flags` (`key`, text).
    pub fn resolve(file: Option<&Path>, flags: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
                path: path.to_path_buf(),
                error,
            })?;
            table = text.parse().map_err(|error| ConfigError::Toml {
                path: path.to_path_buf(),
                error,
            })?;
            table = unalias(table, &path.display().to_string())?;
        }
        let file_table = table.clone();
        for (key, text) in flags {
            if official_flag(key).is_some() {
                if let Some((k, text)) = official::translate("command line", key, text)? {
                    table.insert(k.to_string(), option_value(k, &text)?);
                }
                continue;
            }
            let key = &canonical(key).to_string();
            let info = option(key).ok_or_else(|| ConfigError::UnknownKey {
                origin: "command line".into(),
                key: key.clone(),
            })?;
            table.insert(key.clone(), info.kind.parse(key, text)?);
        }
        let file_origin = file.map_or("defaults".to_string(), |p| p.display().to_string());
        let origin = match flags {
            [] => file_origin.clone(),
            _ => "command line".to_string(),
        };
        let cfg = match Self::from_table(table, &origin) {
            Ok(cfg) => cfg,
            // An error of the file itself names the file.
            Err(e) => {
                return Err(Self::from_table(file_table, &file_origin)
                    .err()
                    .unwrap_or(e));
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The defaults overlaid by `table`, whose keys must all be options. Each section reads
    /// its own keys, so a type error names its key.
    fn from_table(table: toml::Table, origin: &str) -> Result<Self, ConfigError> {
        if let Some(key) = table.keys().find(|k| option(k).is_none()) {
            return Err(ConfigError::UnknownKey {
                origin: origin.to_string(),
                key: key.clone(),
            });
        }
        let table = toml::Value::Table(table);
        fn section<T: serde::de::DeserializeOwned>(
            table: &toml::Value,
            origin: &str,
        ) -> Result<T, ConfigError> {
            table
                .clone()
                .try_into()
                .map_err(|error| ConfigError::Value {
                    origin: origin.to_string(),
                    error,
                })
        }
        Ok(Self {
            model: section(&table, origin)?,
            init: section(&table, origin)?,
            teacher: section(&table, origin)?,
            optim: section(&table, origin)?,
            augment: section(&table, origin)?,
            run: section(&table, origin)?,
            knn: section(&table, origin)?,
        })
    }

    /// Every number inside the range where the paper's formulas mean something: a
    /// negative learning rate trains backwards, a momentum above 1 diverges, a zero
    /// temperature divides by zero; found at start, not after an epoch.
    fn check_domains(&self) -> Result<(), ConfigError> {
        let (t, o, k, m) = (&self.teacher, &self.optim, &self.knn, &self.model);
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let checks: [(&str, f64, bool, &str); 13] = [
            ("lr", o.lr, non_negative(o.lr), ">= 0"),
            ("min_lr", o.min_lr, non_negative(o.min_lr), ">= 0"),
            (
                "weight_decay",
                o.weight_decay,
                non_negative(o.weight_decay),
                ">= 0",
            ),
            (
                "weight_decay_end",
                o.weight_decay_end,
                non_negative(o.weight_decay_end),
                ">= 0",
            ),
            (
                "clip_grad",
                o.clip_grad,
                non_negative(o.clip_grad),
                ">= 0 (0 = off)",
            ),
            (
                "momentum_teacher",
                t.momentum_teacher,
                unit(t.momentum_teacher),
                "in [0, 1]",
            ),
            (
                "center_momentum",
                t.center_momentum,
                unit(t.center_momentum),
                "in [0, 1]",
            ),
            (
                "teacher_temp",
                t.teacher_temp,
                positive(t.teacher_temp),
                "> 0",
            ),
            (
                "warmup_teacher_temp",
                t.warmup_teacher_temp,
                positive(t.warmup_teacher_temp),
                "> 0",
            ),
            (
                "student_temp",
                t.student_temp,
                positive(t.student_temp),
                "> 0",
            ),
            (
                "knn_temperature",
                k.knn_temperature,
                positive(k.knn_temperature),
                "> 0",
            ),
            (
                "drop_path_rate",
                m.drop_path_rate,
                (0.0..1.0).contains(&m.drop_path_rate),
                "in [0, 1)",
            ),
            ("knn_k", k.knn_k as f64, k.knn_k > 0, ">= 1"),
        ];
        for (name, v, ok, want) in checks {
            if !ok {
                return Err(ConfigError::Invalid(format!("{name} {v} must be {want}")));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.optim.batch_size == 0 || self.optim.epochs == 0 {
            return Err(ConfigError::Invalid(
                "batch_size and epochs must be positive".into(),
            ));
        }
        self.augment.validate()?;
        self.check_domains()?;
        if self.init.pretrained_weights.is_some() && self.init.init_from.is_some() {
            return Err(ConfigError::Invalid(
                "pretrained_weights and init_from both set: give one (init_from brings the heads and the centre too)".into(),
            ));
        }
        let k = &self.knn;
        if k.knn_freq > 0 && (k.knn_train.is_none() || k.knn_val.is_none()) {
            return Err(ConfigError::Invalid(
                "knn_freq > 0 needs knn_train and knn_val".into(),
            ));
        }
        self.vit()?;
        Ok(())
    }

    /// The backbone architecture this config trains.
    pub fn vit(&self) -> Result<VitConfig, ConfigError> {
        let m = &self.model;
        let arch = m.arch.to_string();
        let mut cfg = match m.arch {
            Arch::Custom => {
                let need = |v: Option<usize>, key: &str| {
                    v.ok_or_else(|| ConfigError::Invalid(format!("arch = custom needs {key}")))
                };
                VitConfig::new(
                    &arch,
                    m.patch_size,
                    need(m.embed_dim, "embed_dim")?,
                    need(m.depth, "depth")?,
                    need(m.num_heads, "num_heads")?,
                )
            }
            Arch::VitTiny | Arch::VitSmall | Arch::VitBase => {
                VitConfig::preset(&arch, m.patch_size)?
            }
        };
        if let Some(d) = m.embed_dim {
            cfg.embed_dim = d;
        }
        if let Some(d) = m.depth {
            cfg.depth = d;
        }
        if let Some(h) = m.num_heads {
            cfg.num_heads = h;
        }
        cfg.img_size = m.img_size.unwrap_or(self.augment.global_crop_size);
        cfg.drop_path_rate = m.drop_path_rate;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn head(&self) -> HeadConfig {
        let m = &self.model;
        HeadConfig {
            use_bn: m.use_bn_in_head,
            norm_last_layer: m.norm_last_layer,
            hidden_dim: m.head_hidden_dim,
            bottleneck_dim: m.head_bottleneck_dim,
            ..HeadConfig::new(self.vit().map_or(0, |v| v.embed_dim), m.out_dim)
        }
    }

    /// The evaluation transform recorded with the weights (and used by k-NN).
    pub fn eval_transform(&self) -> EvalTransform {
        let crop = self.knn.knn_crop.unwrap_or(self.augment.global_crop_size);
        let standard = EvalTransform::standard(crop);
        EvalTransform {
            resize_size: self.knn.knn_resize.unwrap_or(standard.resize_size),
            crop_size: crop,
            mean: self.augment.mean,
            std: self.augment.std,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// Reads the flat table (a checkpoint's `config.toml`, say) as [`TrainConfig::resolve`] reads a
/// file: unknown keys are errors, missing ones take their defaults.
impl<'de> Deserialize<'de> for TrainConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        Self::from_table(table, "configuration").map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
