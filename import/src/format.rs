//! Telling weight files apart by their first bytes, so that each reader only ever sees
//! files it can read, and anything else is refused with a message saying what the file
//! is not. Shared with the exporter, which takes the same files as `--checkpoint`.

use std::io::Read;
use std::path::Path;

use dino_core::CoreError;

use crate::error::ImportError;
use crate::pth::opcodes as op;

/// What a weight file looks like from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A zip archive, as `torch.save` has written since PyTorch 1.6.
    Pth,
    /// The pre-1.6 `torch.save` stream, which is not supported.
    LegacyPth,
    Safetensors,
    Unknown,
}

/// The legacy `torch.save` stream starts with a pickled magic number (`PROTO 2`, then a
/// 10-byte `LONG1`).
const LEGACY_MAGIC: [u8; 4] = [op::PROTO, 2, op::LONG1, 0x0a];

impl Format {
    pub fn of(head: &[u8]) -> Self {
        if head.starts_with(b"PK\x03\x04") {
            Format::Pth
        } else if head.starts_with(&LEGACY_MAGIC) {
            Format::LegacyPth
        } else if head.len() > 8 && head[8] == b'{' {
            // Safetensors: a little-endian u64 header length, then a JSON object.
            Format::Safetensors
        } else {
            Format::Unknown
        }
    }

    /// Reads the first bytes of `path` to tell its format.
    pub fn detect(path: &Path) -> Result<Self, ImportError> {
        let mut f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
        let mut head = Vec::with_capacity(16);
        f.by_ref()
            .take(16)
            .read_to_end(&mut head)
            .map_err(|e| CoreError::io(path, e))?;
        Ok(Self::of(&head))
    }
}

pub fn unknown_format(path: &Path) -> ImportError {
    ImportError::UnknownFormat {
        path: path.to_path_buf(),
        why: "neither a safetensors file nor a PyTorch .pth archive".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_by_their_first_bytes() {
        assert_eq!(Format::of(b"PK\x03\x04rest"), Format::Pth);
        assert_eq!(Format::of(&[0x80, 2, 0x8a, 0x0a, 0]), Format::LegacyPth);
        assert_eq!(Format::of(b"\x10\0\0\0\0\0\0\0{\"a\""), Format::Safetensors);
        assert_eq!(Format::of(b"definitely not weights"), Format::Unknown);
        assert_eq!(Format::of(b""), Format::Unknown);
    }
}
