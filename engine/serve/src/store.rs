//! The module store: UDF modules content-addressed by SHA-256, stored once
//! under `state_dir/modules/<sha256>.wasm` whoever uploads them. A tenant
//! may use a hash only after uploading those bytes itself (a marker under
//! `state_dir/modules/owners/<tenant>/`): knowing another tenant's hash
//! gives nothing.

use std::path::{Path, PathBuf};

use crate::config::sha256_hex;
use crate::registry::write_atomic;
use crate::ServeError;

pub struct ModuleStore {
    dir: PathBuf,
}

/// A hash as a path component: exactly 64 lowercase hex digits.
pub fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ModuleStore {
    pub fn open(state_dir: &Path) -> Result<ModuleStore, ServeError> {
        let dir = state_dir.join("modules");
        crate::registry::create_private_dir(&dir.join("owners"))
            .map_err(|e| ServeError::Io(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ModuleStore { dir })
    }

    /// Where the module `hash` is (whether or not it exists).
    pub fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.wasm"))
    }

    fn marker(&self, tenant: &str, hash: &str) -> PathBuf {
        self.dir.join("owners").join(tenant).join(hash)
    }

    /// Whether `tenant` uploaded `hash`.
    pub fn owns(&self, tenant: &str, hash: &str) -> bool {
        valid_hash(hash) && self.marker(tenant, hash).is_file() && self.path(hash).is_file()
    }

    /// Stores `bytes` as `hash` for `tenant`; the bytes must hash to it.
    pub fn put(&self, tenant: &str, hash: &str, bytes: &[u8]) -> Result<(), ServeError> {
        if !valid_hash(hash) {
            return Err(ServeError::BadRequest("a module hash is 64 lowercase hex digits".into()));
        }
        let actual = sha256_hex(bytes);
        if actual != hash {
            return Err(ServeError::BadRequest(format!("the module's bytes hash to {actual}, not {hash}")));
        }
        let io = |e: std::io::Error| ServeError::Io(format!("module store: {e}"));
        let path = self.path(hash);
        if !path.is_file() {
            write_atomic(&path, bytes).map_err(io)?;
        }
        let marker = self.marker(tenant, hash);
        if let Some(d) = marker.parent() {
            crate::registry::create_private_dir(d).map_err(io)?;
        }
        write_atomic(&marker, b"").map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_stored_once_by_hash_and_usable_only_by_their_uploaders() {
        let tmp = tempfile::tempdir().unwrap();
        let s = ModuleStore::open(tmp.path()).unwrap();
        let bytes = b"\0asm\x01\0\0\0";
        let h = sha256_hex(bytes);
        assert!(matches!(s.put("acme", &sha256_hex(b"other"), bytes), Err(ServeError::BadRequest(_))));
        assert!(matches!(s.put("acme", "../../etc/passwd", bytes), Err(ServeError::BadRequest(_))));
        s.put("acme", &h, bytes).unwrap();
        assert!(s.owns("acme", &h));
        assert!(!s.owns("bob", &h), "a hash bob did not upload");
        s.put("bob", &h, bytes).unwrap();
        assert!(s.owns("bob", &h));
        let stored: Vec<_> = std::fs::read_dir(tmp.path().join("modules"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
            .collect();
        assert_eq!(stored.len(), 1, "stored once");
    }
}
