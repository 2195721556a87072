//! Block servers: every executor process (and the driver, for input blocks)
//! serves its block store to authenticated peers; a task that needs a block
//! held elsewhere fetches it. A peer that does not answer within the fetch
//! timeout (dead, or stopped) counts as not having the block: a missing
//! shuffle bucket is a fetch failure, a missing cached partition is
//! recomputed from lineage.

use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::protocol::{self, Admission, BlockReply, BlockRequest, Role};
use crate::executor::{Block, BlockStore};
use crate::rdd::BlockId;
use crate::udf::UdfLimits;

/// How long a fetch waits for a peer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves `store` on `listener` until the process ends.
pub fn serve(listener: TcpListener, store: Arc<BlockStore>, secret: Arc<Vec<u8>>) {
    let _ = std::thread::Builder::new().name("weir-block-server".into()).spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (store, secret) = (store.clone(), secret.clone());
            let _ = std::thread::Builder::new().name("weir-block-conn".into()).spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let admitted = protocol::accept(&mut conn, &secret, |role| match role {
                    Role::BlockFetch => Admission::Welcome { executor_id: 0, limits: UdfLimits::default() },
                    Role::Executor { .. } => Admission::Refused { reason: "this is a block server".into() },
                });
                if admitted.is_err() {
                    return;
                }
                while let Ok(BlockRequest::Get(ids)) = protocol::read_frame::<BlockRequest>(&mut conn) {
                    let blocks = ids.iter().map(|id| store.get(id).map(|b| b.to_vec())).collect();
                    if protocol::write_frame(&mut conn, &BlockReply::Blocks(blocks)).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// Fetches blocks from the block server at `addr` (None for each block it
/// does not have, or for all if it cannot be reached in time).
pub fn fetch(addr: &str, secret: &[u8], ids: &[BlockId]) -> Vec<Option<Block>> {
    let none = || ids.iter().map(|_| None).collect();
    let attempt = || -> Option<Vec<Option<Vec<u8>>>> {
        let sock = addr.to_socket_addrs().ok()?.next()?;
        let mut conn = TcpStream::connect_timeout(&sock, FETCH_TIMEOUT).ok()?;
        conn.set_read_timeout(Some(FETCH_TIMEOUT)).ok()?;
        conn.set_write_timeout(Some(FETCH_TIMEOUT)).ok()?;
        protocol::connect(&mut conn, secret, Role::BlockFetch, protocol::PROTOCOL_VERSION).ok()?;
        protocol::write_frame(&mut conn, &BlockRequest::Get(ids.to_vec())).ok()?;
        let BlockReply::Blocks(bs) = protocol::read_frame::<BlockReply>(&mut conn).ok()?;
        (bs.len() == ids.len()).then_some(bs)
    };
    match attempt() {
        Some(bs) => bs.into_iter().map(|b| b.map(Arc::new)).collect(),
        None => none(),
    }
}
