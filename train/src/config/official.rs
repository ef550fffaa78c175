//! `main_dino.py` command lines as users type them: its flags that are not options of
//! their own here (`--use_fp16` maps onto `precision`; `--dist_url env://` and
//! `--local_rank` are what dino-train does anyway), and the architectures it names that
//! dino-train cannot train, refused with what is supported.

use super::ConfigError;
use super::value::bool_flag;

/// A flag of `main_dino.py` that is not an option of the table: its key and help.
#[derive(Clone, Copy, Debug)]
pub struct OfficialFlag {
    pub key: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
    /// The option it sets, if any (the two cannot be given together).
    pub sets: Option<&'static str>,
}

/// The official flags taken for compatibility, in `--help` order.
pub const OFFICIAL_FLAGS: &[OfficialFlag] = &[
    OfficialFlag {
        key: "use_fp16",
        value_name: "BOOL",
        help: "main_dino.py's mixed precision: true is --precision fp16, false is --precision fp32",
        sets: Some("precision"),
    },
    OfficialFlag {
        key: "dist_url",
        value_name: "URL",
        help: "accepted as env:// only: ranks find each other through MASTER_ADDR/MASTER_PORT",
        sets: None,
    },
    OfficialFlag {
        key: "local_rank",
        value_name: "N",
        help: "accepted and ignored, as main_dino.py asks (the rank comes from LOCAL_RANK)",
        sets: None,
    },
];

/// The flag row of an official-only key.
pub fn official_flag(key: &str) -> Option<&'static OfficialFlag> {
    OFFICIAL_FLAGS.iter().find(|f| f.key == key)
}

/// What an official-only flag means here: the `(option, text)` it sets, or nothing when it
/// only states what dino-train does anyway. A value dino-train cannot honour is an error.
pub fn translate(
    origin: &str,
    key: &str,
    text: &str,
) -> Result<Option<(&'static str, String)>, ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("{origin}: --{key} {text}: {why}"));
    match key {
        "use_fp16" => {
            let on = bool_flag(text).ok_or_else(|| {
                bad("not a boolean (true/false, on/off, 1/0, as main_dino.py's bool_flag)")
            })?;
            Ok(Some(("precision", if on { "fp16" } else { "fp32" }.into())))
        }
        "dist_url" if text == "env://" => Ok(None),
        "dist_url" => Err(bad(
            "dino-train sets up multi-process runs from the environment only (torchrun, \
             --nproc_per_node or SLURM: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE); give env:// or leave it out",
        )),
        "local_rank" => match text.parse::<usize>() {
            Ok(_) => Ok(None),
            Err(_) => Err(bad("not a rank number")),
        },
        _ => Err(ConfigError::UnknownKey {
            origin: origin.to_string(),
            key: key.to_string(),
        }),
    }
}

/// Why an architecture `main_dino.py` accepts is refused here (`None` for other names).
pub fn unsupported_arch(name: &str) -> Option<String> {
    const SUPPORTED: &str = "dino-train trains Vision Transformers: vit_tiny, vit_small, vit_base (deit_tiny, deit_small) or custom";
    // torchvision's model constructors, as main_dino.py lists them.
    const TORCHVISION: &[&str] = &[
        "resnet",
        "resnext",
        "wide_resnet",
        "alexnet",
        "vgg",
        "densenet",
        "googlenet",
        "inception",
        "mobilenet",
        "mnasnet",
        "shufflenet",
        "squeezenet",
        "efficientnet",
        "regnet",
        "convnext",
        "swin",
        "maxvit",
        "vit_b_",
        "vit_l_",
        "vit_h_",
    ];
    let name = name.to_lowercase();
    if name.starts_with("xcit") {
        Some(format!(
            "XCiT (torch hub facebookresearch/xcit) is not supported; {SUPPORTED}"
        ))
    } else if TORCHVISION.iter().any(|p| name.starts_with(p)) {
        Some(format!(
            "torchvision networks such as {name} are not supported; {SUPPORTED}"
        ))
    } else {
        None
    }
}
