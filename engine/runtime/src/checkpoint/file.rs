//! Checkpoint files: every file Weir writes for recovery has the same frame —
//! magic, format version, kind, payload length, CRC-32C of the payload — and
//! is stored atomically and durably by a [`super::store::CheckpointStore`]. A
//! torn or corrupt file fails its length or checksum and is reported, never
//! half-read.

use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"WEIRCKPT";
/// The on-disk format version of checkpoint files.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 4;

/// What a checkpoint file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FileKind {
    Metadata = 1,
    State = 2,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn invalid(path: &Path, what: impl Into<String>) -> CheckpointFileError {
    CheckpointFileError::Invalid { path: path.into(), what: what.into() }
}

/// Frames `payload` as a checkpoint file of `kind` (store it with
/// [`super::store::CheckpointStore::put`], which makes it atomic and durable).
pub fn frame(kind: FileKind, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(kind as u32).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// Checks a checkpoint file of `kind` read from `path` and returns its
/// payload (the header removed in place: no second copy of a big file).
pub fn unframe(path: &Path, mut bytes: Vec<u8>, kind: FileKind) -> Result<Vec<u8>, CheckpointFileError> {
    if bytes.len() < HEADER {
        return Err(invalid(path, format!("truncated: {} bytes, shorter than the {HEADER}-byte header", bytes.len())));
    }
    if &bytes[..8] != MAGIC {
        return Err(invalid(path, "not a Weir checkpoint file (bad magic)"));
    }
    let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(invalid(path, format!("format version {version}; this Weir reads version {FORMAT_VERSION}")));
    }
    if u32_at(12) != kind as u32 {
        return Err(invalid(path, format!("holds kind {}, expected {:?}", u32_at(12), kind)));
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len8);
    if (bytes.len() - HEADER) as u64 != len {
        return Err(invalid(path, format!("torn: payload is {} bytes, header says {len}", bytes.len() - HEADER)));
    }
    let crc = u32_at(24);
    if crc32c::crc32c(&bytes[HEADER..]) != crc {
        return Err(invalid(path, "checksum mismatch (corrupt)"));
    }
    bytes.drain(..HEADER);
    Ok(bytes)
}

/// Reads and checks a checkpoint file from `store`.
pub fn read(
    store: &dyn super::store::CheckpointStore,
    name: &str,
    kind: FileKind,
) -> Result<Vec<u8>, CheckpointFileError> {
    let path = store.locate(name);
    let bytes = store.get(name).map_err(|source| CheckpointFileError::Io { path: path.clone(), source })?;
    unframe(&path, bytes, kind)
}

/// Frames and stores a checkpoint file. A file over its bound (the store's
/// [`super::store::CheckpointBounds`]) is not written: it could not be read
/// back. `what` says what it holds, for that error (`data checkpoint of
/// stream "totals" at 5000 ms`).
pub fn write(
    store: &dyn super::store::CheckpointStore,
    name: &str,
    kind: FileKind,
    payload: &[u8],
    what: &str,
) -> Result<(), CheckpointFileError> {
    let (limit, setting) = store.bounds().max_file_bytes(name);
    let size = (HEADER as u64).saturating_add(payload.len() as u64);
    if size > limit {
        return Err(invalid(
            &store.locate(name),
            format!(
                "not written: the {what} is {size} bytes, more than the {limit} allowed \
                 ([checkpoint] {setting} in the job file)"
            ),
        ));
    }
    store
        .put(name, &frame(kind, payload))
        .map_err(|source| CheckpointFileError::Io { path: store.locate(name), source })
}
