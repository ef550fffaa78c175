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
use std::path::Path;

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

/// One field of a small message: its number and payload.
struct Field<'a> {
    number: u64,
    payload: &'a [u8],
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
            })
        })();
        if field.is_err() {
            pos = b.len();
        }
        Some(field)
    })
}

/// The `(key, value)` of a `StringStringEntryProto`.
fn entry(b: &[u8]) -> Result<(String, String), String> {
    let (mut k, mut v) = (String::new(), String::new());
    for f in fields(b) {
        let f = f?;
        let text = || String::from_utf8(f.payload.to_vec()).map_err(|_| "metadata is not UTF-8");
        match f.number {
            ENTRY_KEY => k = text()?,
            ENTRY_VALUE => v = text()?,
            _ => {}
        }
    }
    Ok((k, v))
}

/// Largest `metadata_props` entry read into memory (dino-rs writes a few KiB).
const MAX_ENTRY: u64 = 16 << 20;
/// Bytes hashed per read: the file streams through this buffer, never whole in memory.
const CHUNK: usize = 1 << 20;

/// Digests a serialised `ModelProto`.
pub fn scan(model: &[u8]) -> Result<Scan, String> {
    scan_reader(model, model.len() as u64)
}

/// One varint from `r`, its bytes appended to `raw`; `None` at a clean end of input.
fn read_varint(r: &mut impl Read, raw: &mut Vec<u8>) -> Result<Option<u64>, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8];
        if r.read(&mut b).map_err(|e| e.to_string())? == 0 {
            return if shift == 0 {
                Ok(None)
            } else {
                Err("truncated varint".into())
            };
        }
        raw.push(b[0]);
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(Some(v));
        }
    }
    Err("varint longer than 10 bytes".into())
}

/// Digests a `ModelProto` of `total` bytes read from `r`, streaming: memory stays at one
/// chunk whatever the file claims, and a length past the end is an error before any read.
pub fn scan_reader(mut r: impl Read, total: u64) -> Result<Scan, String> {
    let mut h = Xxh3::new();
    let mut recorded = None;
    let mut used = 0u64;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let mut head = Vec::with_capacity(20);
        let Some(key) = read_varint(&mut r, &mut head)? else {
            break;
        };
        let len = match key & 7 {
            WIRE_VARINT => {
                read_varint(&mut r, &mut head)?.ok_or("truncated varint")?;
                0
            }
            WIRE_I64 => 8,
            WIRE_I32 => 4,
            WIRE_LEN => read_varint(&mut r, &mut head)?.ok_or("truncated length")?,
            w => return Err(format!("unsupported wire type {w}")),
        };
        used = used
            .checked_add(head.len() as u64)
            .and_then(|u| u.checked_add(len))
            .filter(|&u| u <= total)
            .ok_or("a field runs past the end of the file")?;
        if key >> 3 == MODEL_METADATA_PROPS && key & 7 == WIRE_LEN && len <= MAX_ENTRY {
            let mut payload = vec![0u8; len as usize];
            r.read_exact(&mut payload).map_err(|e| e.to_string())?;
            let (k, v) = entry(&payload)?;
            if k == META_CONTENT_DIGEST {
                if recorded.replace(v).is_some() {
                    return Err(format!("`{META_CONTENT_DIGEST}` appears twice"));
                }
                continue;
            }
            h.update(&head);
            h.update(&payload);
            continue;
        }
        h.update(&head);
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            r.read_exact(&mut chunk[..n])
                .map_err(|e| format!("truncated field ({e})"))?;
            h.update(&chunk[..n]);
            left -= n as u64;
        }
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
    let io = |e| CoreError::io(path, e);
    let f = std::fs::File::open(path).map_err(io)?;
    let total = f.metadata().map_err(io)?.len();
    let bad = |why: String| CoreError::Format {
        path: path.to_path_buf(),
        why,
    };
    let s = scan_reader(std::io::BufReader::with_capacity(CHUNK, f), total)
        .map_err(|e| bad(format!("not a readable ONNX model: {e}")))?;
    match s.recorded {
        Some(r) if r != s.digest => Err(bad(format!(
            "the model is damaged: its content digest is {} but dino-export recorded {r}; \
             export it again",
            s.digest
        ))),
        _ => Ok(s.digest),
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
    }
}
