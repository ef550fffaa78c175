//! Finding and loading ONNX Runtime, execution providers and session options.
//!
//! `dino-run` links no ONNX Runtime at build time; it loads `libonnxruntime` at start-up
//! from, in order: `--ort-lib`, the `ORT_DYLIB_PATH` environment variable, the folder of
//! the `dino-run` binary, and the onnxruntime wheel of the Python venv the binary was built
//! with (its path is baked in by `build.rs`).

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::error::RuntimeError;

/// The ONNX Runtime release dino-rs is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";
/// File names looked for next to the binary.
pub const ORT_LIB_NAMES: [&str; 2] = ["libonnxruntime.so.1.31.1", "libonnxruntime.so"];
/// The venv's library, found by `build.rs` (absent when no venv was found at build time).
pub const BAKED_ORT_LIB: Option<&str> = option_env!("DINO_RS_BAKED_ORT_LIB");

/// Where inference runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(i32),
}

impl FromStr for Device {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || RuntimeError::BadDevice(s.to_string());
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse::<i32>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(Self::Cuda)
                    .ok_or_else(bad)
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How sessions are created.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub device: Device,
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    pub threads: usize,
    /// Folder caching optimised graphs (`None`: optimise on every start).
    pub cache_dir: Option<PathBuf>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            threads: 0,
            cache_dir: default_cache_dir(),
        }
    }
}

/// `$XDG_CACHE_HOME/dino-rs/ort` or `$HOME/.cache/dino-rs/ort`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("dino-rs").join("ort"))
}

/// Finds libonnxruntime in the documented order.
pub fn find_ort_lib(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let must_exist = |p: PathBuf, what: &str| {
        if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::OrtLibNotFound {
                tried: format!("{what} {}: no such file", p.display()),
            })
        }
    };
    if let Some(p) = explicit {
        return must_exist(p.to_path_buf(), "--ort-lib");
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return must_exist(PathBuf::from(p), "ORT_DYLIB_PATH");
    }
    let mut tried = Vec::new();
    if let Some(dir) = exe_dir() {
        for name in ORT_LIB_NAMES {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        tried.push(format!("next to the binary in {}", dir.display()));
    } else {
        tried.push(
            "next to the binary (its folder is unknown: no /proc/self/exe, argv[0] not found)"
                .into(),
        );
    }
    if let Some(p) = BAKED_ORT_LIB.map(PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
        tried.push(format!("the build-time venv's {}", p.display()));
    }
    tried.push("--ort-lib and ORT_DYLIB_PATH (not given)".into());
    Err(RuntimeError::OrtLibNotFound {
        tried: tried.join(", "),
    })
}

/// The folder of the running binary: `/proc/self/exe`, else (a chroot or container without
/// `/proc`) `argv[0]` resolved against the working folder or `PATH`, symbolic links followed.
fn exe_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok().or_else(|| {
        let arg0 = PathBuf::from(std::env::args_os().next()?);
        let found = if arg0.components().count() > 1 {
            Some(arg0)
        } else {
            std::env::split_paths(&std::env::var_os("PATH")?)
                .map(|d| d.join(&arg0))
                .find(|p| p.is_file())
        };
        std::fs::canonicalize(found?).ok()
    })?;
    exe.parent().map(Path::to_path_buf)
}

/// Loads ONNX Runtime from `lib` and creates the process-wide environment.
pub fn init_ort(lib: &Path) -> Result<Environment, RuntimeError> {
    let builder = ort::init_from(lib).map_err(|e| RuntimeError::OrtLoad {
        path: lib.to_path_buf(),
        why: e.to_string(),
    })?;
    builder
        .with_name("dino-run")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::ort(lib, "creating the ONNX Runtime environment", e))
}

/// Cache file of the optimised graph of a model with content digest `digest` for these
/// options: keyed by what the model holds (not its path, size or date, which copies keep
/// while the content changes), the device and the ONNX Runtime version.
fn cache_path(model: &Path, digest: &str, opts: &SessionOptions) -> Option<PathBuf> {
    let dir = opts.cache_dir.as_ref()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    opts.device.hash(&mut h);
    ORT_VERSION.hash(&mut h);
    let stem = model.file_stem()?.to_string_lossy();
    Some(dir.join(format!("{stem}-{digest}-{:016x}.onnx", h.finish())))
}

/// Creates a session for `model` after checking its content digest (a damaged file is
/// refused). On the CPU the optimised graph is cached (see [`SessionOptions::cache_dir`])
/// so later starts skip graph optimisation; a cached graph loads while the model's
/// content is hashed, and only a model that passes the check gets its session.
pub fn create_session(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
) -> Result<Session, RuntimeError> {
    let check = dino_core::onnx_digest::Check::start(model)?;
    let cache = |digest: &str| {
        (opts.device == Device::Cpu)
            .then(|| cache_path(model, digest, opts))
            .flatten()
    };
    // A model that records its digest: ONNX Runtime loads the sealed entry of that digest
    // (never the unchecked file) while the content is hashed.
    let early = (check.recorded().and_then(cache))
        .filter(|c| c.is_file())
        .map(|c| {
            let loaded = load_entry(env, model, opts, &c);
            (c, loaded)
        });
    let digest = check.finish()?;
    let (entry, loaded) = match early {
        Some((c, loaded)) => (c, loaded?),
        None => match cache(&digest) {
            Some(c) if c.is_file() => {
                let loaded = load_entry(env, model, opts, &c)?;
                (c, loaded)
            }
            c => return create_uncached_or_caching(env, model, opts, c.as_deref()),
        },
    };
    match loaded {
        Some(s) => Ok(s),
        None => rebuild_entry(env, model, opts, &entry),
    }
}

/// The session of a sealed cache entry; `None` when the entry is unsealed, changed since it
/// was sealed, or not loadable.
fn load_entry(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
    c: &Path,
) -> Result<Option<Session>, RuntimeError> {
    if std::fs::read_to_string(seal_path(c)).ok() != cache_digest(c) {
        return Ok(None);
    }
    Ok(build(env, model, opts, None)?.commit_from_file(c).ok())
}

/// A damaged or unsealed cache entry: rebuilt, or left alone with an uncached session if
/// it cannot be removed (a read-only cache).
fn rebuild_entry(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
    c: &Path,
) -> Result<Session, RuntimeError> {
    let cache = std::fs::remove_file(c).is_ok().then_some(c);
    create_uncached_or_caching(env, model, opts, cache)
}

/// Optimises `model` (already checked), writing and sealing the optimised graph at
/// `cache` when given.
fn create_uncached_or_caching(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
    cache: Option<&Path>,
) -> Result<Session, RuntimeError> {
    let session = build(env, model, opts, Some(cache))?
        .commit_from_file(model)
        .map_err(RuntimeError::ctx(model, "loading the model"))?;
    if let Some(c) = cache
        && let Some(d) = cache_digest(c)
    {
        // Best effort: without its seal the entry is rebuilt next time.
        let _ = dino_core::st::write_bytes_atomic(&seal_path(c), d.as_bytes());
    }
    Ok(session)
}

/// The seal of a cache entry, written once ONNX Runtime has written the entry.
fn seal_path(c: &Path) -> PathBuf {
    let mut s = c.as_os_str().to_owned();
    s.push(".seal");
    PathBuf::from(s)
}

/// What the seal records of a cache entry: the size and modification time of its graph
/// and weight files. The entry's name already carries the verified digest of the model
/// it was made from; the seal tells an entry left as written from one changed or half
/// written since, without reading the weights a second time (cold start).
fn cache_digest(c: &Path) -> Option<String> {
    let mut data = c.as_os_str().to_owned();
    data.push(".data");
    let mut seal = String::new();
    for p in [c.to_path_buf(), PathBuf::from(data)] {
        match std::fs::metadata(&p) {
            Ok(m) => {
                let t = m
                    .modified()
                    .ok()?
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?;
                seal.push_str(&format!("{} {} ", m.len(), t.as_nanos()));
            }
            Err(_) => seal.push_str("- "),
        }
    }
    Some(seal)
}

/// A session builder for `opts`. `optimise`: `None` loads an already optimised graph as
/// is; `Some(cache)` optimises, writing the result to `cache` when given.
fn build(
    env: &Environment,
    model: &Path,
    opts: &SessionOptions,
    optimise: Option<Option<&Path>>,
) -> Result<ort::session::builder::SessionBuilder, RuntimeError> {
    let mut b = Session::builder(env).map_err(RuntimeError::ctx(model, "creating a session"))?;
    if opts.threads > 0 {
        b = b
            .with_intra_threads(opts.threads)
            .map_err(RuntimeError::ctx(model, "setting the thread count"))?;
    }
    b = b
        // Memory patterns pre-plan one block per input shape: measurably more peak memory
        // with batches of varying size, no measurable speed-up here.
        .with_memory_pattern(false)
        .map_err(RuntimeError::ctx(model, "setting the memory pattern"))?
        .with_inter_threads(1)
        .map_err(RuntimeError::ctx(model, "setting the thread count"))?;
    match opts.device {
        // The default CPU provider, with ONNX Runtime's default arena (as Python's).
        Device::Cpu => {}
        Device::Cuda(id) => {
            let cuda = ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure();
            b = b
                .with_execution_providers([cuda])
                .map_err(|e| RuntimeError::Cuda {
                    device: id,
                    why: e.message().to_string(),
                })?;
        }
    }
    let Some(cache) = optimise else {
        return b
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(RuntimeError::ctx(model, "setting the optimisation level"));
    };
    b = b
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(RuntimeError::ctx(model, "setting the optimisation level"))?;
    if let Some(c) = cache
        && std::fs::create_dir_all(c.parent().unwrap_or(Path::new("."))).is_ok()
    {
        // Weights go to a side file, which ONNX Runtime memory-maps when loading the
        // cached graph instead of parsing and copying them (lower peak memory).
        let data_name = format!(
            "{}.data",
            c.file_name()
                .map(|f| f.to_string_lossy())
                .unwrap_or_default()
        );
        b = b
            .with_optimized_model_path(c)
            .map_err(RuntimeError::ctx(model, "setting the optimised model path"))?
            .with_config_entry(
                "session.optimized_model_external_initializers_file_name",
                data_name,
            )
            .map_err(RuntimeError::ctx(model, "setting the optimised model path"))?
            .with_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes",
                "1024",
            )
            .map_err(RuntimeError::ctx(model, "setting the optimised model path"))?;
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("cuda:-1".parse::<Device>().is_err());
        assert!("gpu".parse::<Device>().is_err());
    }

    #[test]
    fn explicit_missing_library_is_named() {
        let e = find_ort_lib(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
        assert!(msg.contains("pip install onnxruntime==1.31.1"), "{msg}");
    }
}
