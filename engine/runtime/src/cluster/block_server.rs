//! Block servers: every executor process (and the driver, for input blocks)
//! serves its block store to authenticated peers; a task that needs a block
//! held elsewhere fetches it. A peer that does not answer within the fetch
//! timeout (dead, or stopped) counts as not having the block: a missing
//! shuffle bucket is a fetch failure, a missing cached partition is
//! recomputed from lineage.
//!
//! A block server serves the stores of every job its process holds blocks
//! for ([`JobBlocks`]): a request names its job, and a block id is looked up
//! in that job's store only, so jobs that share executors (`weir serve`)
//! never read each other's blocks, even where their block ids coincide.
//!
//! Connections are capped ([`super::gate`]), the handshake has a deadline,
//! and an authenticated peer gets [`IDLE_TIMEOUT`] between requests and for
//! each reply it does not read.

use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::gate::Gate;
use super::protocol::{self, Admission, BlockReply, BlockRequest, JobId, Role};
use crate::executor::{Block, BlockStore};
use crate::rdd::BlockId;
use crate::udf::UdfLimits;

/// How long a fetch waits for a peer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a server waits for an authenticated peer's next request, or for
/// it to take a reply.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits a little after `accept` fails (out of descriptors, say), so the
/// loop does not spin while the condition lasts.
pub(crate) fn accept_failed(e: &std::io::Error) {
    tracing::warn!("accepting a connection failed: {e}");
    std::thread::sleep(Duration::from_millis(50));
}

/// The block stores of the jobs a process serves, by job.
#[derive(Default)]
pub struct JobBlocks {
    stores: std::sync::Mutex<std::collections::HashMap<JobId, Arc<BlockStore>>>,
}

impl JobBlocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<JobId, Arc<BlockStore>>> {
        self.stores.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves `store` as job `job`'s (replacing nothing: an existing store stays).
    pub fn insert(&self, job: JobId, store: Arc<BlockStore>) -> Arc<BlockStore> {
        self.lock().entry(job).or_insert(store).clone()
    }

    /// Job `job`'s store, if it has one.
    pub fn get(&self, job: JobId) -> Option<Arc<BlockStore>> {
        self.lock().get(&job).cloned()
    }

    /// Stops serving job `job`'s blocks; they are freed once no task holds them.
    pub fn remove(&self, job: JobId) -> Option<Arc<BlockStore>> {
        self.lock().remove(&job)
    }

    /// Jobs served.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A running block server. An executor that rejoins its driver as a new
/// incarnation retires its old server, so blocks the driver declared lost
/// with the old incarnation can never be served to a newer stage.
pub struct BlockServer {
    addr: Option<SocketAddr>,
    live: Arc<AtomicBool>,
}

impl BlockServer {
    /// Stops serving: requests on open connections are no longer answered,
    /// and the listening socket is closed (a connection to it wakes the
    /// accept loop, which then sees it is retired).
    pub fn retire(&self) {
        self.live.store(false, Ordering::SeqCst);
        if let Some(a) = self.addr {
            let _ = TcpStream::connect_timeout(&a, Duration::from_millis(200));
        }
    }
}

/// Serves the jobs' stores in `store` on `listener` until the process ends
/// or the returned handle is retired; a request over `max_frame` bytes ends
/// its connection.
pub fn serve(listener: TcpListener, store: Arc<JobBlocks>, secret: Arc<Vec<u8>>, max_frame: usize) -> BlockServer {
    let live = Arc::new(AtomicBool::new(true));
    let handle = BlockServer { addr: listener.local_addr().ok(), live: live.clone() };
    let _ = std::thread::Builder::new().name("weir-block-server".into()).spawn(move || {
        let gate = Gate::new();
        for conn in listener.incoming() {
            if !live.load(Ordering::SeqCst) {
                return; // retired: the listener closes with this thread
            }
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    accept_failed(&e);
                    continue;
                }
            };
            let mut ticket = match gate.admit(&conn) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("refused a block fetch connection: {e}");
                    continue;
                }
            };
            let (store, secret, live) = (store.clone(), secret.clone(), live.clone());
            let _ = std::thread::Builder::new().name("weir-block-conn".into()).spawn(move || {
                let admitted = protocol::accept(&mut conn, &secret, |role| match role {
                    Role::BlockFetch => {
                        Admission::Welcome { executor_id: 0, limits: UdfLimits::default(), max_frame: max_frame as u64 }
                    }
                    Role::Executor { .. } => Admission::Refused { reason: "this is a block server".into() },
                });
                if admitted.is_err() || !ticket.authenticated() {
                    return;
                }
                if conn.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
                    || conn.set_write_timeout(Some(IDLE_TIMEOUT)).is_err()
                {
                    return;
                }
                while let Ok(BlockRequest::Get { job, ids }) =
                    protocol::read_frame_limited::<BlockRequest>(&mut conn, max_frame)
                {
                    if !live.load(Ordering::SeqCst) {
                        return;
                    }
                    // A job this process does not (or no longer) serve has no blocks here.
                    let store = store.get(job);
                    let blocks =
                        ids.iter().map(|id| store.as_ref().and_then(|s| s.get(id)).map(|b| b.to_vec())).collect();
                    if protocol::write_frame(&mut conn, &BlockReply::Blocks(blocks)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    handle
}

/// How long a peer that could not be reached counts as unreachable: fetches
/// from it fail at once meanwhile, instead of each waiting out
/// [`FETCH_TIMEOUT`] (a task reading many cached blocks of a partitioned peer
/// would otherwise wait once per block).
pub const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// Block fetches of one executor incarnation, remembering which peers just
/// failed to answer.
pub struct Fetcher {
    unreachable: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The largest reply taken.
    max_frame: usize,
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::new(protocol::MAX_FRAME)
    }
}

impl Fetcher {
    /// A fetcher that takes replies of at most `max_frame` bytes.
    pub fn new(max_frame: usize) -> Self {
        Fetcher { unreachable: Default::default(), max_frame }
    }

    /// [`fetch`], except that a peer that failed within [`UNREACHABLE_FOR`]
    /// is not asked again (None for every block, as if it had not answered).
    pub fn fetch(&self, addr: &str, secret: &[u8], job: JobId, ids: &[BlockId]) -> Vec<Option<Block>> {
        let mut down = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
        down.retain(|_, since| since.elapsed() < UNREACHABLE_FOR);
        if down.contains_key(addr) {
            return ids.iter().map(|_| None).collect();
        }
        drop(down);
        match try_fetch(addr, secret, job, ids, self.max_frame) {
            Fetched::Blocks(bs) => bs,
            // Asked again block by block: each may fit where all did not.
            Fetched::TooBig(_) if ids.len() > 1 => {
                ids.iter().flat_map(|id| self.fetch(addr, secret, job, std::slice::from_ref(id))).collect()
            }
            Fetched::TooBig(why) => {
                tracing::warn!("block {} from {addr}: {why} (this executor's --max-frame-bytes)", ids[0]);
                vec![None]
            }
            Fetched::Unreachable => {
                tracing::info!(
                    "block server {addr} did not answer; treating it as unreachable for {UNREACHABLE_FOR:?}"
                );
                let mut down = self.unreachable.lock().unwrap_or_else(|p| p.into_inner());
                down.insert(addr.to_string(), std::time::Instant::now());
                ids.iter().map(|_| None).collect()
            }
        }
    }
}

/// Fetches job `job`'s blocks from the block server at `addr` (None for
/// each block it does not have, or for all if it cannot be reached in time).
pub fn fetch(addr: &str, secret: &[u8], job: JobId, ids: &[BlockId]) -> Vec<Option<Block>> {
    match try_fetch(addr, secret, job, ids, protocol::MAX_FRAME) {
        Fetched::Blocks(bs) => bs,
        Fetched::TooBig(_) | Fetched::Unreachable => ids.iter().map(|_| None).collect(),
    }
}

/// What a fetch got.
enum Fetched {
    Blocks(Vec<Option<Block>>),
    /// The reply was over the fetcher's frame limit (why).
    TooBig(String),
    /// The server could not be reached, or did not answer in time.
    Unreachable,
}

/// The blocks; or the reply was over `max_frame`; or the server could not
/// be reached or did not answer in time.
fn try_fetch(addr: &str, secret: &[u8], job: JobId, ids: &[BlockId], max_frame: usize) -> Fetched {
    let mut too_big = None;
    let mut attempt = || -> Option<Vec<Option<Vec<u8>>>> {
        let sock = addr.to_socket_addrs().ok()?.next()?;
        let mut conn = TcpStream::connect_timeout(&sock, FETCH_TIMEOUT).ok()?;
        protocol::connect_within(&mut conn, secret, Role::BlockFetch, protocol::PROTOCOL_VERSION, FETCH_TIMEOUT)
            .ok()?;
        // The handshake set its own timeouts.
        conn.set_read_timeout(Some(FETCH_TIMEOUT)).ok()?;
        conn.set_write_timeout(Some(FETCH_TIMEOUT)).ok()?;
        protocol::write_frame(&mut conn, &BlockRequest::Get { job, ids: ids.to_vec() }).ok()?;
        let reply = protocol::read_frame_limited::<BlockReply>(&mut conn, max_frame);
        if let Err(e) = &reply {
            if protocol::is_too_big(e) {
                too_big = Some(e.to_string());
            }
        }
        let BlockReply::Blocks(bs) = reply.ok()?;
        (bs.len() == ids.len()).then_some(bs)
    };
    match attempt() {
        Some(bs) => Fetched::Blocks(bs.into_iter().map(|b| b.map(Arc::new)).collect()),
        None => too_big.map_or(Fetched::Unreachable, Fetched::TooBig),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdd::RddId;

    /// A retired server (the block server of an incarnation the driver
    /// declared lost) serves nothing more: not on a connection opened
    /// before it was retired, not on a new one. So no stale block of an old
    /// incarnation reaches a newer stage.
    #[test]
    fn a_retired_block_server_serves_no_stale_block() {
        let secret = Arc::new(b"block-server-test".to_vec());
        let store = BlockStore::new();
        let id = BlockId::Rdd { rdd: RddId { time: 1000, node: 2 }, partition: 0 };
        store.put(id, Arc::new(b"stale bytes".to_vec())).unwrap();
        let jobs = Arc::new(JobBlocks::default());
        jobs.insert(7, store);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = serve(listener, jobs, secret.clone(), protocol::MAX_FRAME);
        let got = fetch(&addr, &secret, 7, &[id]);
        assert_eq!(got[0].as_deref().map(Vec::as_slice), Some(&b"stale bytes"[..]), "served while live");
        // A peer connected and authenticated before the retirement.
        let sock = addr.to_socket_addrs().unwrap().next().unwrap();
        let mut open = TcpStream::connect_timeout(&sock, FETCH_TIMEOUT).unwrap();
        protocol::connect_within(&mut open, &secret, Role::BlockFetch, protocol::PROTOCOL_VERSION, FETCH_TIMEOUT)
            .unwrap();
        open.set_read_timeout(Some(FETCH_TIMEOUT)).unwrap();
        server.retire();
        protocol::write_frame(&mut open, &BlockRequest::Get { job: 7, ids: vec![id] }).unwrap();
        assert!(protocol::read_frame::<BlockReply>(&mut open).is_err(), "an open connection is answered no more");
        assert!(
            matches!(try_fetch(&addr, &secret, 7, &[id], protocol::MAX_FRAME), Fetched::Unreachable),
            "a new connection is served nothing"
        );
    }

    /// A reply over the fetcher's frame limit is asked for again block by
    /// block; a single block over it is missing (named in a warning), and
    /// the peer is not taken for unreachable: later fetches from it work.
    #[test]
    fn a_reply_over_the_fetchers_limit_is_fetched_block_by_block() {
        let secret = Arc::new(b"block-server-test".to_vec());
        let store = BlockStore::new();
        let id = |p: u32| BlockId::Rdd { rdd: RddId { time: 1000, node: 3 }, partition: p };
        store.put(id(0), Arc::new(vec![1; 700 << 10])).unwrap();
        store.put(id(1), Arc::new(vec![2; 700 << 10])).unwrap();
        store.put(id(2), Arc::new(vec![3; 2 << 20])).unwrap();
        let jobs = Arc::new(JobBlocks::default());
        jobs.insert(7, store);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let _server = serve(listener, jobs, secret.clone(), protocol::MAX_FRAME);
        let fetcher = Fetcher::new(protocol::MIN_FRAME_LIMIT);
        assert!(matches!(try_fetch(&addr, &secret, 7, &[id(0), id(1)], protocol::MIN_FRAME_LIMIT), Fetched::TooBig(_)));
        let got = fetcher.fetch(&addr, &secret, 7, &[id(0), id(1)]);
        let lens: Vec<Option<usize>> = got.iter().map(|b| b.as_ref().map(|b| b.len())).collect();
        assert_eq!(lens, [Some(700 << 10), Some(700 << 10)], "both, one request each");
        assert!(fetcher.fetch(&addr, &secret, 7, &[id(2)])[0].is_none(), "a block over the limit is missing");
        assert!(fetcher.fetch(&addr, &secret, 7, &[id(0)])[0].is_some(), "the peer is still asked");
    }
}
