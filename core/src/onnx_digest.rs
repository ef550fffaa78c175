//! The content digest of an exported model, so that the model that runs is the model asked
//! for: `dino-export` records a digest of everything in the file but its metadata, and
//! `dino-run` recomputes it on every load. A flipped weight byte is refused, and the
//! optimised-graph cache is keyed by content, not by a path or a date that `cp -p`,
//! `rsync -a` or `tar` carry over to another model.
//!
//! The digest is XXH3-128 (fast enough to stay within dino-run's cold-start budget; this
//! guards against damage and mix-ups, not against someone who can rewrite the file) over
//! the top-level fields of the `ModelProto` in file order, each as stored (key and
//! payload), except the one `metadata_props` entry that holds the digest itself: the
//! preprocessing the metadata describes is as protected as the weights.

use std::io::Read;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::Xxh3;

use crate::error::CoreError;

/// `metadata_props` key of the digest (32 hex digits).
pub const META_CONTENT_DIGEST: &str = "dino_rs.content_xxh3";

/// Field numbers of `onnx.ModelProto` and `onnx.StringStringEntryProto`.
const MODEL_METADATA_PROPS: u64 = 14;
const ENTRY_KEY: u64 = 1;
const ENTRY_VALUE: u64 = 2;
const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

/// What one pass over a model file finds.
#[derive(Debug)]
pub struct Scan {
    /// Hex digest of the content.
    pub digest: String,
    /// The digest the file records, if any.
    pub recorded: Option<String>,
}

/// One field of a message: its number, its payload, and the whole field as stored.
struct Field<'a> {
    number: u64,
    payload: &'a [u8],
    raw: &'a [u8],
}

fn varint(b: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// The fields of a protobuf message, checked against its length.
fn fields(b: &[u8]) -> impl Iterator<Item = Result<Field<'_>, String>> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= b.len() {
            return None;
        }
        let start = pos;
        let field = (|| {
            let key = varint(b, &mut pos)?;
            let len = match key & 7 {
                WIRE_VARINT => {
                    varint(b, &mut pos)?;
                    0
                }
                WIRE_I64 => 8,
                WIRE_I32 => 4,
                WIRE_LEN => usize::try_from(varint(b, &mut pos)?).map_err(|e| e.to_string())?,
                w => return Err(format!("unsupported wire type {w}")),
            };
            let payload_start = pos;
            let end = pos
                .checked_add(len)
                .filter(|&e| e <= b.len())
                .ok_or("a field runs past the end of the file")?;
            pos = end;
            Ok(Field {
                number: key >> 3,
                payload: if key & 7 == WIRE_LEN {
                    &b[payload_start..end]
                } else {
                    &[]
                },
                raw: &b[start..end],
            })
        })();
        if field.is_err() {
            pos = b.len();
        }
        Some(field)
    })
}

/// The `(key, value)` of a `StringStringEntryProto`, as stored.
fn entry(b: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (mut k, mut v): (&[u8], &[u8]) = (&[], &[]);
    for f in fields(b) {
        let f = f?;
        match f.number {
            ENTRY_KEY => k = f.payload,
            ENTRY_VALUE => v = f.payload,
            _ => {}
        }
    }
    Ok((k, v))
}

/// The digest a top-level field records, if it is the digest's metadata entry.
fn digest_entry(f: &Field<'_>) -> Result<Option<String>, String> {
    if f.number != MODEL_METADATA_PROPS || f.payload.is_empty() {
        return Ok(None);
    }
    let (k, v) = entry(f.payload)?;
    if k != META_CONTENT_DIGEST.as_bytes() {
        return Ok(None);
    }
    // It names a cache entry: 32 hex digits, nothing a path could be made of.
    if v.len() != 32
        || !v
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return Err("the recorded digest is not 32 lowercase hex digits".into());
    }
    Ok(Some(String::from_utf8_lossy(v).into_owned()))
}

/// The digest `model` records, found by a walk over its top-level field headers alone:
/// no payload is read but the metadata's.
pub fn recorded(model: &[u8]) -> Result<Option<String>, String> {
    let mut found = None;
    for f in fields(model) {
        if let Some(d) = digest_entry(&f?)?
            && found.replace(d).is_some()
        {
            return Err(format!("`{META_CONTENT_DIGEST}` appears twice"));
        }
    }
    Ok(found)
}

/// Digests a serialised `ModelProto` in place: each top-level field is hashed as stored
/// straight from `model` (a memory map on load), so a model costs one pass of XXH3 and
/// no copy.
pub fn scan(model: &[u8]) -> Result<Scan, String> {
    scan_with(model, |_| {})
}

/// Bytes hashed between two calls of `done`.
const CHUNK: usize = 8 << 20;

/// [`scan`], calling `done(end)` whenever the bytes before `end` have been hashed, so that
/// a memory map can let them go (resident memory stays at a chunk, not the model).
fn scan_with(model: &[u8], mut done: impl FnMut(usize)) -> Result<Scan, String> {
    let mut h = Xxh3::new();
    let mut recorded = None;
    let mut end = 0;
    for f in fields(model) {
        let f = f?;
        match digest_entry(&f)? {
            Some(d) => {
                if recorded.replace(d).is_some() {
                    return Err(format!("`{META_CONTENT_DIGEST}` appears twice"));
                }
            }
            None => {
                for piece in f.raw.chunks(CHUNK) {
                    h.update(piece);
                    if piece.len() == CHUNK {
                        done(end + piece.len());
                    }
                    end += piece.len();
                }
                continue;
            }
        }
        end += f.raw.len();
    }
    Ok(Scan {
        digest: format!("{:032x}", h.digest128()),
        recorded,
    })
}

/// Appends the digest of `model` (a serialised `ModelProto` without one) to its
/// `metadata_props`; a field appended to a message is part of it.
pub fn append_digest(model: &mut Vec<u8>) -> Result<(), String> {
    let s = scan(model)?;
    if s.recorded.is_some() {
        return Err("the model already records a digest".into());
    }
    let mut e = Vec::new();
    put_len(&mut e, ENTRY_KEY, META_CONTENT_DIGEST.as_bytes());
    put_len(&mut e, ENTRY_VALUE, s.digest.as_bytes());
    put_len(model, MODEL_METADATA_PROPS, &e);
    Ok(())
}

fn put_len(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, number << 3 | WIRE_LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads `path` and checks its recorded digest; returns the content digest (the cache
/// key). A model without a recorded digest (exported before digests) is accepted.
pub fn verify_file(path: &Path) -> Result<String, CoreError> {
    Check::start(path)?.finish()
}

/// The content check of one model file, hashing on its own thread so that the caller can
/// do other work meanwhile (dino-run loads its cached optimised graph, keyed by the digest
/// the file records). Nothing may come of that work before [`Check::finish`] accepts.
pub struct Check {
    path: PathBuf,
    recorded: Option<String>,
    worker: std::thread::JoinHandle<Result<Scan, String>>,
}

impl Check {
    /// Maps `path`, reads the digest it records, and starts hashing its content.
    pub fn start(path: &Path) -> Result<Self, CoreError> {
        let bytes = Bytes::read(path)?;
        let recorded = recorded(bytes.as_slice()).map_err(|e| unreadable(path, e))?;
        let worker = std::thread::Builder::new()
            .name("content-check".into())
            .spawn(move || bytes.scan())
            .map_err(|e| CoreError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            recorded,
            worker,
        })
    }

    /// The digest the file records (`None` for files exported before digests).
    pub fn recorded(&self) -> Option<&str> {
        self.recorded.as_deref()
    }

    /// Waits for the hash; the content digest when it matches what the file records.
    pub fn finish(self) -> Result<String, CoreError> {
        let path = &self.path;
        let s = self
            .worker
            .join()
            .map_err(|_| unreadable(path, "the content check failed".into()))?
            .map_err(|e| unreadable(path, e))?;
        match s.recorded {
            Some(r) if r != s.digest => Err(CoreError::Format {
                path: path.clone(),
                why: format!(
                    "the model is damaged: its content digest is {} but dino-export recorded \
                     {r}; export it again",
                    s.digest
                ),
            }),
            _ => Ok(s.digest),
        }
    }
}

fn unreadable(path: &Path, why: String) -> CoreError {
    CoreError::Format {
        path: path.to_path_buf(),
        why: format!("not a readable ONNX model: {why}"),
    }
}

/// The bytes of a model file: a read-only map, or the whole file where it cannot be mapped
/// (a pipe, some network file systems), as ONNX Runtime will read it anyway.
enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn read(path: &Path) -> Result<Self, CoreError> {
        let io = |e| CoreError::io(path, e);
        let mut f = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and private to the check. A process truncating the
        // model while it is hashed would fault (SIGBUS), as for any reader that maps it;
        // models are replaced by rename (as every dino-rs tool writes them), not in place.
        if let Ok(m) = unsafe { memmap2::Mmap::map(&f) } {
            let _ = m.advise(memmap2::Advice::Sequential);
            return Ok(Self::Map(m));
        }
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).map_err(io)?;
        Ok(Self::Owned(bytes))
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Map(m) => m,
            Self::Owned(v) => v,
        }
    }

    /// Hashes the content, letting mapped pages go once hashed: the model is never resident
    /// as a whole on account of the check.
    fn scan(&self) -> Result<Scan, String> {
        let mut released = 0;
        scan_with(self.as_slice(), |end| {
            if let Self::Map(m) = self {
                // SAFETY: a read-only map of a file, never written: dropping its pages only
                // means that a later read faults them in again from the file, and the
                // bytes before `end` are not read again.
                let _ = unsafe {
                    m.unchecked_advise_range(
                        memmap2::UncheckedAdvice::DontNeed,
                        released,
                        end - released,
                    )
                };
                released = end;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny `ModelProto`: ir_version 9, a "graph" payload, one metadata entry.
    fn model() -> Vec<u8> {
        let mut m = Vec::new();
        put_varint(&mut m, 1 << 3);
        put_varint(&mut m, 9);
        put_len(&mut m, 7, b"graph bytes: weights and nodes");
        let mut e = Vec::new();
        put_len(&mut e, ENTRY_KEY, b"arch");
        put_len(&mut e, ENTRY_VALUE, b"vit_small");
        put_len(&mut m, MODEL_METADATA_PROPS, &e);
        m
    }

    #[test]
    fn the_digest_covers_all_but_itself() {
        let mut m = model();
        let before = scan(&m).unwrap();
        assert_eq!(before.recorded, None);
        append_digest(&mut m).unwrap();
        let after = scan(&m).unwrap();
        assert_eq!(after.digest, before.digest);
        assert_eq!(after.recorded.as_deref(), Some(before.digest.as_str()));
        assert_eq!(recorded(&m).unwrap(), after.recorded);
        assert!(append_digest(&mut m.clone()).is_err());

        // One flipped bit in the graph is found; the file is still valid protobuf.
        let at = m.windows(5).position(|w| w == b"graph").unwrap();
        m[at + 8] ^= 0x04;
        let s = scan(&m).unwrap();
        assert_ne!(s.digest, before.digest);
        assert_eq!(s.recorded.as_deref(), Some(before.digest.as_str()));

        // So is a changed metadata value.
        let mut m2 = model();
        append_digest(&mut m2).unwrap();
        let at = m2.windows(9).position(|w| w == b"vit_small").unwrap();
        m2[at + 4] = b'S';
        assert_ne!(scan(&m2).unwrap().digest, before.digest);
    }

    #[test]
    fn damaged_framing_is_an_error() {
        let m = model();
        assert!(scan(&m[..m.len() - 3]).is_err());
        assert!(scan(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(scan(&[0x0b]).unwrap_err().contains("wire type"));

        // A recorded digest names a cache entry, so it must be one.
        let mut e = Vec::new();
        put_len(&mut e, ENTRY_KEY, META_CONTENT_DIGEST.as_bytes());
        put_len(&mut e, ENTRY_VALUE, b"../../../../etc/passwd-0123456789");
        let mut m = model();
        put_len(&mut m, MODEL_METADATA_PROPS, &e);
        assert!(recorded(&m).unwrap_err().contains("hex digits"));
    }

    #[test]
    fn a_file_is_verified_through_its_map_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        let mut m = model();
        append_digest(&mut m).unwrap();
        std::fs::write(&path, &m).unwrap();
        assert_eq!(verify_file(&path).unwrap(), scan(&m).unwrap().digest);

        let at = m.windows(5).position(|w| w == b"graph").unwrap();
        m[at + 8] ^= 0x01;
        std::fs::write(&path, &m).unwrap();
        let err = verify_file(&path).unwrap_err().to_string();
        assert!(err.contains("m.onnx") && err.contains("damaged"), "{err}");
    }

    #[test]
    fn large_fields_hash_in_chunks_as_one_stream() {
        // 2.5 chunks of weights: the chunked hash equals the hash of the file at once.
        let mut m = Vec::new();
        let weights: Vec<u8> = (0..CHUNK * 5 / 2).map(|i| (i * 7 % 251) as u8).collect();
        put_len(&mut m, 7, &weights);
        let mut ends = Vec::new();
        let s = scan_with(&m, |end| ends.push(end)).unwrap();
        let whole = xxhash_rust::xxh3::xxh3_128(&m);
        assert_eq!(s.digest, format!("{whole:032x}"));
        // The field as stored (key, length, payload) goes in whole chunks, the rest at once.
        assert_eq!(ends, vec![CHUNK, 2 * CHUNK]);
    }
}
