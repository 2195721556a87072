//! The driver <-> executor protocol, version 7 (`docs/cluster.md`).
//!
//! Every connection (an executor's control connection to the driver, or a
//! block fetch from a block server) starts the same way: the server sends a
//! [`Challenge`] with a fresh nonce and its protocol version; the client
//! answers [`Hello`] with its version and HMAC-SHA256(secret, nonce); the
//! server answers [`Admission::Welcome`] or [`Admission::Refused`] (and closes). After that, frames
//! are `u32le length | bincode(message)`.
//!
//! Every byte from a peer is untrusted: a frame's length is checked before
//! anything is allocated for it ([`HANDSHAKE_FRAME`] before authentication,
//! [`MAX_FRAME`] after), its body is read as it arrives (memory grows with
//! the bytes received, not with the length claimed), decoding is bounded so
//! no length inside the payload allocates more than a small multiple of the
//! frame's size, and the whole handshake has a deadline
//! ([`HANDSHAKE_DEADLINE`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::executor::{Task, TaskResult};
use crate::rdd::{BlockId, Rdd, RddId};
use crate::udf::{ModuleHash, UdfLimits};

/// Version 2: a stage's lineage is registered once per executor
/// (`Stage`), and `Run` names it instead of carrying it. Version 3: a
/// result names the executor incarnation (the `executor_id` it was
/// welcomed with) that computed it, and the driver drops results of any
/// other incarnation. Version 4: a result carries the task's UDF usage per
/// module (calls, fuel, failures); the driver heartbeats its executors
/// ([`ToExecutor::Heartbeat`]), and an executor that hears nothing from its
/// driver for its heartbeat timeout treats the driver as lost. (A version-3
/// executor would not know the frame, so the versions do not mix: each
/// side refuses the other at the handshake.) Version 5: a lineage's
/// data-checkpoint read (`RddOp::Checkpointed`) carries the job's
/// checkpoint bounds, which the executor reads the file under; an
/// executor's heartbeat carries its UDF instances' linear memory (now and
/// peak), for the status page; and executors may serve many jobs at once
/// (`weir serve`'s shared `local-cluster` pool): every task, stage, module
/// and result frame and every block fetch names its [`JobId`], a job's
/// sandbox limits come with its [`ToExecutor::Job`] frame, and
/// [`ToExecutor::EndJob`] releases what a job left on the executor.
/// Version 6: the `Job` frame carries the job's block budget (a server
/// tenant's `block_quota_bytes`), which the executor holds the job's blocks
/// on it to, shared by the jobs that name the same budget.
/// Version 7: a result's UDF usage counts the calls that trapped apart
/// (`UdfUsage::traps`), and each side of a handshake tells the other the
/// largest frame it takes (`max_frame` in the executor's [`Role`] and the
/// driver's [`Admission::Welcome`]), so a sender refuses what its peer
/// would refuse, saying why.
pub const PROTOCOL_VERSION: u32 = 7;
const MAGIC: [u8; 4] = *b"WEIR";
/// Largest frame accepted from an authenticated peer (a task with its
/// lineage, a block, a module) unless configured lower
/// (`--max-frame-bytes`; [`check_frame_limit`]).
pub const MAX_FRAME: usize = 1 << 30;
/// The lowest frame limit that can be configured. Frames over a peer's
/// limit are not sent: a job with a module over the driver's limit is
/// refused, a task result over it fails the task, any other frame over an
/// executor's loses that executor, each naming the limit; a block reply
/// over a fetcher's is asked for again block by block (`docs/cluster.md`).
pub const MIN_FRAME_LIMIT: usize = 1 << 20;

/// A frame whose length is over the reader's limit (the payload of the
/// `InvalidData` error [`read_frame_limited`] returns then; see
/// [`is_too_big`]).
#[derive(Debug, thiserror::Error)]
#[error("a frame of {len} bytes is over the {limit}-byte limit")]
pub struct FrameTooBig {
    pub len: usize,
    pub limit: usize,
}

/// True when `e` says a frame was over the reader's limit.
pub fn is_too_big(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|x| x.downcast_ref::<FrameTooBig>().is_some())
}

/// A peer's stated frame limit, as the limit this side sends it under
/// (untrusted: brought into the configurable range).
pub fn peer_frame_limit(max_frame: u64) -> usize {
    usize::try_from(max_frame).unwrap_or(MAX_FRAME).clamp(MIN_FRAME_LIMIT, MAX_FRAME)
}

/// `bytes` as a limit for frames from authenticated peers, or why not:
/// from [`MIN_FRAME_LIMIT`] to [`MAX_FRAME`].
pub fn check_frame_limit(bytes: u64) -> Result<usize, String> {
    match usize::try_from(bytes) {
        Ok(b) if (MIN_FRAME_LIMIT..=MAX_FRAME).contains(&b) => Ok(b),
        _ => Err(format!(
            "a frame limit of {bytes} bytes is out of range: from {MIN_FRAME_LIMIT} (1 MiB) to {MAX_FRAME} (1 GiB)"
        )),
    }
}
/// Largest frame accepted during the handshake (a challenge, a hello, an
/// admission are well under 1 KiB; a few KiB of addresses and reasons).
pub const HANDSHAKE_FRAME: usize = 64 << 10;
/// How long a peer has to complete the handshake, however it trickles bytes.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Bytes a frame's body is read in (so a claimed length allocates nothing
/// until the bytes arrive).
const READ_CHUNK: usize = 64 << 10;

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
    /// `max_frame`: the largest frame it takes (`--max-frame-bytes`).
    Executor { slots: u32, block_addr: String, pid: u32, max_frame: u64 },
    /// A peer fetching blocks.
    BlockFetch,
}

/// The fields a [`Hello`] of any version starts with (bincode reads a
/// prefix and ignores the rest).
#[derive(Deserialize)]
struct HelloHead {
    magic: [u8; 4],
    version: u32,
    proof: [u8; 32],
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
    /// `max_frame`: the largest frame the welcoming side takes.
    Welcome {
        executor_id: u64,
        limits: UdfLimits,
        max_frame: u64,
    },
    Refused {
        reason: String,
    },
}

/// A stage lineage's id on one driver (never reused for other lineage).
pub type StageId = u64;

/// A job's number on one driver (never reused): the executors keep each
/// job's blocks and modules apart by it. `weir run` has one job (0);
/// `weir serve` numbers its jobs as they start.
pub type JobId = u64;

/// Stage lineages an executor keeps, oldest evicted first. The driver
/// mirrors each executor's cache with the same bound, so it re-sends a
/// lineage exactly when the executor has evicted it.
pub const STAGE_CACHE: usize = 16;

/// A block budget as the driver names it to an executor: the name errors
/// give it (`tenant acme's block_quota_bytes`) and its limit in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockQuota {
    pub what: String,
    pub bytes: u64,
}

/// Driver -> executor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToExecutor {
    /// Job `job` runs tasks on this executor from now on, under these UDF
    /// sandbox limits (sent before the job's first task on it).
    Job {
        job: JobId,
        limits: UdfLimits,
        /// The budget its blocks on this executor count against (a `weir
        /// serve` tenant's `block_quota_bytes`), shared by every job that
        /// names the same one; `None`: unbounded.
        blocks: Option<BlockQuota>,
    },
    /// Job `job` is over: the executor drops its blocks and modules.
    EndJob {
        job: JobId,
    },
    /// A UDF module the executor asked for (for job `job`); it checks that
    /// the bytes' SHA-256 is `hash` before using them.
    Module {
        job: JobId,
        name: String,
        hash: ModuleHash,
        bytes: Vec<u8>,
    },
    /// The driver does not have a module the executor asked for.
    NoModule {
        job: JobId,
        hash: ModuleHash,
    },
    /// Registers the lineage (the RDDs, see `Lineage::stage_closure`) of
    /// stage `stage`, which the `Run`s that follow name.
    Stage {
        job: JobId,
        stage: StageId,
        rdds: BTreeMap<RddId, Rdd>,
    },
    /// A task of stage `stage`; its `rdds` are empty on the wire and are the
    /// stage's registered lineage.
    Run {
        job: JobId,
        stage: StageId,
        task: Box<Task>,
    },
    Shutdown,
    /// The driver is alive (sent every [`DRIVER_HEARTBEAT_INTERVAL`], idle or
    /// not): an executor that reads nothing for its heartbeat timeout
    /// treats its driver as lost (its host vanished, or it was cut off).
    Heartbeat,
}

/// How often the driver tells each executor it is alive.
pub const DRIVER_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

/// Executor -> driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromExecutor {
    /// A task's result, from the incarnation `executor_id` (the id of the
    /// `Welcome` of the connection the task came on). An executor that
    /// rejoined its driver is a new incarnation with a new id; a result
    /// computed for an earlier one is stale and is never counted.
    Result { executor_id: u64, job: JobId, result: Box<TaskResult> },
    /// The executor is alive, with the linear memory its UDF instances
    /// hold now and the most they held at once (bytes).
    Heartbeat { udf_memory_bytes: u64, udf_memory_peak_bytes: u64 },
    /// A task of job `job` needs a module this executor does not have.
    NeedModule { job: JobId, hash: ModuleHash },
    /// Task `task_id` named a stage whose lineage this executor does not
    /// hold (evicted, or never registered); it did not run. The driver sends
    /// the lineage and the task again.
    UnknownStage { job: JobId, stage: StageId, task_id: u64 },
}

/// Block fetches, after the handshake.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BlockRequest {
    /// Blocks of job `job` (a block id is unique within its job only).
    Get { job: JobId, ids: Vec<BlockId> },
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

/// Reads one frame of at most [`MAX_FRAME`] bytes (after the handshake).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> std::io::Result<T> {
    read_frame_limited(r, MAX_FRAME)
}

/// Reads one frame of at most `limit` bytes. The body is read as it arrives,
/// and decoding may claim (for strings and byte buffers) no more than a
/// small multiple of the frame's length, so a hostile length costs nothing.
pub fn read_frame_limited<T: DeserializeOwned>(r: &mut impl Read, limit: usize) -> std::io::Result<T> {
    let buf = read_frame_bytes(r, limit)?;
    decode_bounded(&buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("malformed frame: {e}")))
}

/// One frame's payload, undecoded (at most `limit` bytes, read as they arrive).
fn read_frame_bytes(r: &mut impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, FrameTooBig { len, limit }));
    }
    let mut buf = Vec::with_capacity(len.min(READ_CHUNK));
    let got = r.take(len as u64).read_to_end(&mut buf)?;
    if got < len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the peer closed after {got} of a frame's {len} bytes"),
        ));
    }
    Ok(buf)
}

/// Decodes `buf` with a bincode limit of the smallest power of four (from
/// 64 KiB) at or above its length. Only strings and byte buffers claim
/// against the limit, one byte per byte, so a well-formed frame never
/// exceeds its own length; a length inside the payload that does is refused
/// before anything is allocated for it.
fn decode_bounded<T: DeserializeOwned>(buf: &[u8]) -> Result<T, bincode::error::DecodeError> {
    use bincode::config::standard;
    macro_rules! within {
        ($($n:literal),*) => {
            $(if buf.len() <= (1usize << $n) {
                return bincode::serde::decode_from_slice(buf, standard().with_limit::<{ 1usize << $n }>()).map(|(m, _)| m);
            })*
        };
    }
    within!(16, 18, 20, 22, 24, 26, 28);
    bincode::serde::decode_from_slice(buf, standard().with_limit::<MAX_FRAME>()).map(|(m, _)| m)
}

/// A socket whose reads and writes all end by one deadline (a peer that
/// trickles a byte now and then still runs out of time).
struct Deadline<'a> {
    sock: &'a TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the handshake took too long"));
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.set_read_timeout(Some(self.left()?))?;
        (&mut &*self.sock).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sock.set_write_timeout(Some(self.left()?))?;
        (&mut &*self.sock).write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, msg)
}

/// Server side of the handshake, within [`HANDSHAKE_DEADLINE`]: returns the
/// client's role, or an error after telling the client why it was refused.
/// The socket's timeouts are the caller's to set again afterwards.
pub fn accept(conn: &mut TcpStream, secret: &[u8], admit: impl FnOnce(&Role) -> Admission) -> std::io::Result<Role> {
    let conn = &mut Deadline { sock: conn, until: Instant::now() + HANDSHAKE_DEADLINE };
    let nonce = random_bytes()?;
    write_frame(conn, &Challenge { magic: MAGIC, version: PROTOCOL_VERSION, nonce })?;
    let bad = |e: String| invalid(format!("not a Weir peer (bad hello: {e})"));
    let buf = read_frame_bytes(conn, HANDSHAKE_FRAME).map_err(|e| bad(e.to_string()))?;
    // The fields every version's hello starts with, first: a peer of
    // another version (whose role may be shaped differently) is refused
    // with the reason, not dropped as malformed.
    let hello: HelloHead = decode_bounded(&buf).map_err(|e| bad(format!("malformed frame: {e}")))?;
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
    let hello: Hello = decode_bounded(&buf).map_err(|e| bad(format!("malformed frame: {e}")))?;
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

/// Client side of the handshake, within [`HANDSHAKE_DEADLINE`] (the server
/// is as untrusted as any peer until it has answered). The socket's timeouts
/// are the caller's to set again afterwards.
pub fn connect(conn: &mut TcpStream, secret: &[u8], role: Role, version: u32) -> std::io::Result<Admission> {
    connect_within(conn, secret, role, version, HANDSHAKE_DEADLINE)
}

/// [`connect`] with another deadline (block fetches wait less).
pub fn connect_within(
    conn: &mut TcpStream,
    secret: &[u8],
    role: Role,
    version: u32,
    within: Duration,
) -> std::io::Result<Admission> {
    let conn = &mut Deadline { sock: conn, until: Instant::now() + within };
    let ch: Challenge = read_frame_limited(conn, HANDSHAKE_FRAME)?;
    if ch.magic != MAGIC {
        return Err(invalid("the server is not a Weir driver or executor".into()));
    }
    write_frame(conn, &Hello { magic: MAGIC, version, proof: hmac(secret, &ch.nonce), role })?;
    let adm: Admission = read_frame_limited(conn, HANDSHAKE_FRAME)?;
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

    /// Lengths claimed by the header, or inside the payload, allocate nothing.
    #[test]
    fn hostile_lengths_are_refused_before_allocating() {
        let mut big = (1u32 << 30).to_le_bytes().to_vec();
        big.extend_from_slice(&[0; 16]);
        let e = read_frame_limited::<Hello>(&mut big.as_slice(), HANDSHAKE_FRAME).unwrap_err();
        assert!(e.to_string().contains("over the 65536-byte limit"), "{e}");
        let mut body = b"WEIR".to_vec();
        body.extend_from_slice(&[2]);
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 1, 0xfd]);
        body.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let mut f = (body.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(&body);
        let e = read_frame::<Hello>(&mut f.as_slice()).unwrap_err();
        assert!(e.to_string().contains("malformed frame"), "{e}");
        // A frame cut short is an error, not a wait for bytes never sent.
        let short = [10u8, 0, 0, 0, 1, 2];
        assert!(read_frame::<Hello>(&mut &short[..]).is_err());
    }

    #[test]
    fn a_frame_round_trips() {
        let msg = Admission::Refused { reason: "x".repeat(100_000) };
        let f = encode_frame(&msg).unwrap();
        let Admission::Refused { reason } = read_frame::<Admission>(&mut f.as_slice()).unwrap() else { panic!() };
        assert_eq!(reason.len(), 100_000);
    }

    /// A peer of version 6, whose hello's role is shaped as it was then
    /// (no `max_frame`), is refused naming its version, as any other
    /// version is: not dropped as a malformed frame.
    #[test]
    fn a_version_6_hello_is_refused_naming_its_version() {
        #[derive(Serialize)]
        enum Role6 {
            Executor { slots: u32, block_addr: String, pid: u32 },
        }
        #[derive(Serialize)]
        struct Hello6 {
            magic: [u8; 4],
            version: u32,
            proof: [u8; 32],
            role: Role6,
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let welcome = |_: &Role| Admission::Welcome { executor_id: 1, limits: UdfLimits::default(), max_frame: 0 };
            accept(&mut c, b"s", welcome).map(drop).map_err(|e| e.to_string())
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let ch: Challenge = read_frame_limited(&mut c, HANDSHAKE_FRAME).unwrap();
        let role = Role6::Executor { slots: 1, block_addr: "127.0.0.1:1".into(), pid: 1 };
        write_frame(&mut c, &Hello6 { magic: MAGIC, version: 6, proof: hmac(b"s", &ch.nonce), role }).unwrap();
        let adm: Admission = read_frame_limited(&mut c, HANDSHAKE_FRAME).expect("a refusal, not a closed connection");
        let Admission::Refused { reason } = adm else { panic!("admitted") };
        assert!(reason.contains("protocol version 6 is not supported"), "{reason}");
        assert!(server.join().unwrap().unwrap_err().contains("version 6"));
    }

    /// Bounded random input (a fuzz run in every `cargo test`): random and
    /// mutated frames of every message type give an error or a message,
    /// never a panic, an abort or a wait for bytes that never come.
    #[test]
    fn hostile_frames_never_panic() {
        use crate::rdd::{Rdd, RddId, RddOp};
        let mut seed = 0x5745_4952_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let id = RddId { time: 1000, node: 1 };
        let rdd = Rdd { id, partitions: 2, op: RddOp::Input { source: 0 }, persist: true, label: "x".into() };
        let valid: Vec<Vec<u8>> = vec![
            encode_frame(&ToExecutor::Stage { job: 1, stage: 7, rdds: [(id, rdd)].into_iter().collect() }).unwrap(),
            encode_frame(&FromExecutor::UnknownStage { job: 1, stage: 7, task_id: 3 }).unwrap(),
            encode_frame(&ToExecutor::Heartbeat).unwrap(),
            encode_frame(&Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                proof: [7; 32],
                role: Role::Executor { slots: 2, block_addr: "127.0.0.1:1".into(), pid: 9, max_frame: 1 << 20 },
            })
            .unwrap(),
            encode_frame(&Admission::Refused { reason: "no".into() }).unwrap(),
        ];
        for case in 0..20_000u32 {
            let mut f = valid[(case as usize) % valid.len()].clone();
            if case % 5 == 0 {
                f = (0..(next() % 96) as usize).map(|_| next() as u8).collect();
            } else {
                for _ in 0..1 + next() % 3 {
                    let at = 4 + (next() as usize) % (f.len().max(5) - 4);
                    if at < f.len() {
                        f[at] = next() as u8;
                    }
                }
            }
            let _ = read_frame::<ToExecutor>(&mut f.as_slice());
            let _ = read_frame::<FromExecutor>(&mut f.as_slice());
            let _ = read_frame_limited::<Hello>(&mut f.as_slice(), HANDSHAKE_FRAME);
            let _ = read_frame_limited::<Admission>(&mut f.as_slice(), HANDSHAKE_FRAME);
            let _ = read_frame::<BlockRequest>(&mut f.as_slice());
        }
    }
}
