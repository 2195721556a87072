//! Checkpoint files: every file Weir writes for recovery has the same frame —
//! magic, format version, kind, payload length, CRC-32C of the payload — and
//! is written to a temporary name, fsynced, renamed into place, and the
//! directory fsynced. A torn or corrupt file fails its length or checksum and
//! is reported, never half-read.

use std::io::Write;
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
pub enum CheckpointFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn invalid(path: &Path, what: impl Into<String>) -> CheckpointFileError {
    CheckpointFileError::Invalid { path: path.into(), what: what.into() }
}

/// Writes `payload` atomically and durably as a checkpoint file of `kind`.
pub fn write(path: &Path, kind: FileKind, payload: &[u8]) -> Result<(), CheckpointFileError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CheckpointFileError::Io { path: p, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(kind as u32).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    if crash_injection_due() {
        // Die with half a file written: what a power cut or SIGKILL leaves.
        let _ = f.write_all(&bytes[..bytes.len() / 2]);
        let _ = f.sync_all();
        std::process::abort();
    }
    f.write_all(&bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir).map_err(io(dir))?;
    Ok(())
}

/// Crash injection for tests: `WEIR_CRASH_AT_CHECKPOINT_WRITE=N` aborts the
/// process halfway through its N-th checkpoint file write; with
/// `WEIR_CRASH_MARKER=path` only once (the marker file records that it did).
fn crash_injection_due() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let Some(n) = std::env::var("WEIR_CRASH_AT_CHECKPOINT_WRITE").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return false;
    };
    if WRITES.fetch_add(1, Ordering::Relaxed) + 1 != n {
        return false;
    }
    match std::env::var_os("WEIR_CRASH_MARKER") {
        Some(marker) => std::fs::OpenOptions::new().write(true).create_new(true).open(marker).is_ok(),
        None => true,
    }
}

/// Fsyncs a directory, so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Reads and verifies a checkpoint file of `kind`; returns its payload.
pub fn read(path: &Path, kind: FileKind) -> Result<Vec<u8>, CheckpointFileError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointFileError::Io { path: path.into(), source })?;
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
    let len = u64::from_le_bytes(len8) as usize;
    if bytes.len() - HEADER != len {
        return Err(invalid(path, format!("torn: payload is {} bytes, header says {len}", bytes.len() - HEADER)));
    }
    let payload = &bytes[HEADER..];
    if crc32c::crc32c(payload) != u32_at(24) {
        return Err(invalid(path, "checksum mismatch (corrupt)"));
    }
    Ok(payload.to_vec())
}
