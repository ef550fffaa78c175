//! What an option's value is: how its flag text becomes a TOML value, what `--help` shows
//! for it, and the string form of the enum options, whose names come from `clap::ValueEnum`
//! alone (serde, `Display`, `FromStr` and the possible values in `--help` all use them).

use std::fmt;
use std::path::PathBuf;

use clap::ValueEnum;
use clap::builder::PossibleValue;

use crate::config::Arch;
use crate::data::PhotometricSpec;
use crate::device::{DeviceSpec, PrecisionSpec};
use crate::optim::OptimizerKind;

/// One row of the option table: the option's key (its TOML key and `--flag`), help and
/// kind of value. Generated with the option's field by `options_section!`.
#[derive(Clone, Copy, Debug)]
pub struct OptionInfo {
    pub key: &'static str,
    /// The field's doc comment, its lines joined.
    pub doc: &'static str,
    /// The `--help` section listing the option.
    pub heading: &'static str,
    pub kind: ValueKind,
}

impl OptionInfo {
    /// The help text: the doc comment on one line.
    pub fn help(&self) -> &'static str {
        self.doc.trim()
    }
}

/// How a flag's text becomes the option's TOML value.
#[derive(Clone, Copy, Debug)]
pub enum ValueKind {
    /// An integer, read as a TOML literal (`800`).
    Literal(&'static str),
    /// A float as Python's `float()` reads it (`0.99`, `5e-4`, `1.`, `.5`).
    Float,
    /// A boolean as the official `utils.bool_flag` reads it (`true`, `False`, `0`, `on`, ...).
    Bool,
    /// Text taken as it is (a path, a device).
    Text(&'static str),
    /// A list of floats: `0.4,1.0`, `[0.4, 1.0]`, or `0.4 1.0` (the official `nargs='+'`,
    /// one flag value per number).
    List(&'static str),
    /// One of an enum's names, listed by `--help`.
    Choice(&'static str, fn() -> Vec<PossibleValue>),
}

/// A flag whose text is not a value of the option's kind.
#[derive(Debug, thiserror::Error)]
#[error("--{key} {text}: not a valid <{expected}>")]
pub struct FlagError {
    pub key: String,
    pub text: String,
    pub expected: &'static str,
}

impl ValueKind {
    /// The placeholder `--help` shows after the flag.
    pub fn value_name(&self) -> &'static str {
        match self {
            Self::Float => "FLOAT",
            Self::Bool => "BOOL",
            Self::Literal(n) | Self::Text(n) | Self::List(n) | Self::Choice(n, _) => n,
        }
    }

    /// The TOML value of `text`, given on the command line as `--key text`.
    pub fn parse(&self, key: &str, text: &str) -> Result<toml::Value, FlagError> {
        let literal = |t: &str| {
            let mut doc = format!("v = {t}").parse::<toml::Table>().ok()?;
            let v = doc.remove("v")?;
            doc.is_empty().then_some(v)
        };
        let float = |t: &str| t.trim().parse::<f64>().ok().map(toml::Value::Float);
        let value = match self {
            Self::Text(_) | Self::Choice(..) => Some(toml::Value::String(text.to_string())),
            Self::Literal(_) => literal(text),
            Self::Float => float(text),
            Self::Bool => bool_flag(text).map(toml::Value::Boolean),
            Self::List(_) => {
                let inner = text.trim().trim_start_matches('[').trim_end_matches(']');
                inner
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|t| !t.is_empty())
                    .map(float)
                    .collect::<Option<Vec<_>>>()
                    .map(toml::Value::Array)
            }
        };
        value.ok_or_else(|| FlagError {
            key: key.to_string(),
            text: text.to_string(),
            expected: self.value_name(),
        })
    }
}

/// The official `utils.bool_flag`: `off`, `false`, `0` and `on`, `true`, `1`, in any case.
pub fn bool_flag(text: &str) -> Option<bool> {
    match text.to_lowercase().as_str() {
        "off" | "false" | "0" => Some(false),
        "on" | "true" | "1" => Some(true),
        _ => None,
    }
}

/// A TOML value written as flag text (`0.4,1.0` for a list): how `--help` shows defaults.
pub fn flag_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(flag_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The kind of value of an option's Rust type.
pub trait OptionType {
    const KIND: ValueKind;
}

impl OptionType for f64 {
    const KIND: ValueKind = ValueKind::Float;
}
impl OptionType for usize {
    const KIND: ValueKind = ValueKind::Literal("N");
}
impl OptionType for u64 {
    const KIND: ValueKind = ValueKind::Literal("N");
}
impl OptionType for bool {
    const KIND: ValueKind = ValueKind::Bool;
}
impl OptionType for PathBuf {
    const KIND: ValueKind = ValueKind::Text("PATH");
}
impl OptionType for String {
    const KIND: ValueKind = ValueKind::Text("NAME");
}
impl OptionType for [f64; 2] {
    const KIND: ValueKind = ValueKind::List("A,B");
}
impl OptionType for [f32; 3] {
    const KIND: ValueKind = ValueKind::List("R,G,B");
}
impl OptionType for DeviceSpec {
    const KIND: ValueKind = ValueKind::Text("DEVICE");
}
/// An option without a default: its flag takes the inner type's text.
impl<T: OptionType> OptionType for Option<T> {
    const KIND: ValueKind = T::KIND;
}

/// A name that is not one of an enum option's names.
#[derive(Debug, thiserror::Error)]
#[error("`{value}` is not one of {expected}{}", .note.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
pub struct ChoiceError {
    pub value: String,
    pub expected: String,
    /// Why a name users may know from elsewhere is not supported.
    pub note: Option<String>,
}

fn possible_values<T: ValueEnum>() -> Vec<PossibleValue> {
    T::value_variants()
        .iter()
        .filter_map(ValueEnum::to_possible_value)
        .collect()
}

fn parse_choice<T: ValueEnum>(s: &str) -> Result<T, ChoiceError> {
    T::from_str(s, false).map_err(|_| ChoiceError {
        value: s.to_string(),
        expected: possible_values::<T>()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        note: None,
    })
}

fn write_choice<T: ValueEnum>(v: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match v.to_possible_value() {
        Some(p) => f.write_str(p.get_name()),
        None => Err(fmt::Error),
    }
}

/// Serde as a string, through `Display` and `FromStr`: how the enum-like options appear in
/// TOML files.
macro_rules! serde_as_str {
    ($($ty:ty),+ $(,)?) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )+};
}

/// The reason a refused name is refused, when the option explains its names.
macro_rules! choice_note {
    ($s:expr) => {
        None
    };
    ($s:expr, $explain:path) => {
        $explain($s)
    };
}

/// `Display`, `FromStr`, serde and the option kind of an enum option, all from its
/// `clap::ValueEnum` names; the literal is its placeholder in `--help`, and the optional
/// function explains names that are refused on purpose.
macro_rules! choice_option {
    ($($ty:ty: $value_name:literal $(=> $explain:path)?),+ $(,)?) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_choice(self, f)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = ChoiceError;
            fn from_str(s: &str) -> Result<Self, ChoiceError> {
                parse_choice(s).map_err(|e| ChoiceError { note: choice_note!(s $(, $explain)?), ..e })
            }
        }
        impl OptionType for $ty {
            const KIND: ValueKind = ValueKind::Choice($value_name, possible_values::<$ty>);
        }
        serde_as_str!($ty);
    )+};
}

choice_option!(
    Arch: "ARCH" => crate::config::unsupported_arch,
    OptimizerKind: "OPTIMIZER",
    PrecisionSpec: "PRECISION",
    PhotometricSpec: "WHERE",
);
serde_as_str!(DeviceSpec);
