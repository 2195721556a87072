//! The driver <-> executor protocol, version 2 (`docs/cluster.md`).
//!
//! Every connection (an executor's control connection to the driver, or a
//! block fetch from a block server) starts the same way: the server sends a
//! [`Challenge`] with a fresh nonce and its protocol version; the client
//! answers [`Hello`] with its version and HMAC-SHA256(secret, nonce); the
//! server answers [`Admission::Welcome`] or [`Admission::Refused`] (and closes). After that, frames
//! are `u32le length | bincode(message)`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::executor::{Task, TaskResult};
use crate::rdd::{BlockId, Rdd, RddId};
use crate::udf::{ModuleHash, UdfLimits};

/// Version 2: a stage's lineage is registered once per executor
/// (`Stage`), and `Run` names it instead of carrying it.
pub const PROTOCOL_VERSION: u32 = 2;
const MAGIC: [u8; 4] = *b"WEIR";
/// Largest frame accepted (a task with its lineage, a block, a module).
pub const MAX_FRAME: usize = 1 << 30;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub magic: [u8; 4],
    pub version: u32,
    pub nonce: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Role {
    /// An executor joining: how many tasks it runs at once, where its block
    /// server listens, its pid (for logs).
    Executor { slots: u32, block_addr: String, pid: u32 },
    /// A peer fetching blocks.
    BlockFetch,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u32,
    pub proof: [u8; 32],
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Admission {
    Welcome { executor_id: u64, limits: UdfLimits },
    Refused { reason: String },
}

/// A stage lineage's id on one driver (never reused for other lineage).
pub type StageId = u64;

/// Stage lineages an executor keeps, oldest evicted first. The driver
/// mirrors each executor's cache with the same bound, so it re-sends a
/// lineage exactly when the executor has evicted it.
pub const STAGE_CACHE: usize = 16;

/// Driver -> executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToExecutor {
    /// A UDF module the executor asked for; it checks that the bytes' SHA-256
    /// is `hash` before using them.
    Module {
        name: String,
        hash: ModuleHash,
        bytes: Vec<u8>,
    },
    /// The driver does not have a module the executor asked for.
    NoModule {
        hash: ModuleHash,
    },
    /// Registers the lineage (the RDDs, see `Lineage::stage_closure`) of
    /// stage `stage`, which the `Run`s that follow name.
    Stage {
        stage: StageId,
        rdds: BTreeMap<RddId, Rdd>,
    },
    /// A task of stage `stage`; its `rdds` are empty on the wire and are the
    /// stage's registered lineage.
    Run {
        stage: StageId,
        task: Box<Task>,
    },
    Shutdown,
}

/// Executor -> driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromExecutor {
    Result(Box<TaskResult>),
    Heartbeat,
    /// A task needs a module this executor does not have.
    NeedModule {
        hash: ModuleHash,
    },
    /// Task `task_id` named a stage whose lineage this executor does not
    /// hold (evicted, or never registered); it did not run. The driver sends
    /// the lineage and the task again.
    UnknownStage {
        stage: StageId,
        task_id: u64,
    },
}

/// Block fetches, after the handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BlockRequest {
    Get(Vec<BlockId>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BlockReply {
    Blocks(Vec<Option<Vec<u8>>>),
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Compares in constant time (a proof must not leak how much of it matched).
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 bytes from the OS's random source (nonces, generated secrets).
pub fn random_bytes() -> std::io::Result<[u8; 32]> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// A message as one frame: `u32le length | bincode(message)`.
pub fn encode_frame<T: Serialize>(msg: &T) -> std::io::Result<Vec<u8>> {
    let bytes = bincode::serde::encode_to_vec(msg, bincode::config::standard())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    if bytes.len() > MAX_FRAME {
        // The peer would refuse it: fail here, saying why.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {} bytes is over the {MAX_FRAME}-byte limit", bytes.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + bytes.len());
    buf.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    buf.extend_from_slice(&bytes);
    Ok(buf)
}

pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> std::io::Result<()> {
    w.write_all(&encode_frame(msg)?)?;
    w.flush()
}

pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    bincode::serde::decode_from_slice(&buf, bincode::config::standard())
        .map(|(m, _)| m)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed frame: {e}")))
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg)
}

/// Server side of the handshake: returns the client's role, or an error
/// after telling the client why it was refused.
pub fn accept(conn: &mut TcpStream, secret: &[u8], admit: impl FnOnce(&Role) -> Admission) -> std::io::Result<Role> {
    let nonce = random_bytes()?;
    write_frame(conn, &Challenge { magic: MAGIC, version: PROTOCOL_VERSION, nonce })?;
    let hello: Hello = read_frame(conn).map_err(|e| invalid(format!("not a Weir peer (bad hello: {e})")))?;
    let refusal = if hello.magic != MAGIC {
        Some("not a Weir peer".to_string())
    } else if hello.version != PROTOCOL_VERSION {
        Some(format!(
            "protocol version {} is not supported; this driver speaks version {PROTOCOL_VERSION}",
            hello.version
        ))
    } else if !same(&hello.proof, &hmac(secret, &nonce)) {
        Some("authentication failed: the peer does not know the cluster secret".to_string())
    } else {
        None
    };
    if let Some(reason) = refusal {
        let _ = write_frame(conn, &Admission::Refused { reason: reason.clone() });
        return Err(invalid(reason));
    }
    match admit(&hello.role) {
        Admission::Refused { reason } => {
            let _ = write_frame(conn, &Admission::Refused { reason: reason.clone() });
            Err(invalid(reason))
        }
        welcome => {
            write_frame(conn, &welcome)?;
            Ok(hello.role)
        }
    }
}

/// Client side of the handshake.
pub fn connect(conn: &mut TcpStream, secret: &[u8], role: Role, version: u32) -> std::io::Result<Admission> {
    let ch: Challenge = read_frame(conn)?;
    if ch.magic != MAGIC {
        return Err(invalid("the server is not a Weir driver or executor".into()));
    }
    write_frame(conn, &Hello { magic: MAGIC, version, proof: hmac(secret, &ch.nonce), role })?;
    let adm: Admission = read_frame(conn)?;
    if let Admission::Refused { reason } = &adm {
        return Err(invalid(format!("refused: {reason}")));
    }
    Ok(adm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
