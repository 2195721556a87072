//! UDFs as the plan sees them: function kinds and the ABI's constants,
//! module identities (SHA-256), per-job sandbox limits and typed errors. The
//! host that runs them lives in the runtime (`weir::udf`).

pub mod abi;
pub mod error;
pub mod exports;
pub mod limits;

use std::fmt;

use sha2::{Digest, Sha256};

pub use abi::UdfKind;
pub use error::{UdfError, UdfErrorKind, UdfSite};
pub use exports::{parse_exports_section, DeclaredExport, EXPORTS_SECTION};
pub use limits::{UdfLimits, UdfLimitsOverrides};

/// The SHA-256 of a module's bytes: its identity in lineage and checkpoints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct ModuleHash(pub [u8; 32]);

impl ModuleHash {
    pub fn of(bytes: &[u8]) -> Self {
        ModuleHash(Sha256::digest(bytes).into())
    }
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}
