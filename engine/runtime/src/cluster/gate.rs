//! Caps on the connections a listening port holds, so idle or slow peers
//! cannot exhaust a process's descriptors or threads. Connections that have
//! not authenticated yet are capped per peer address and in total; when a
//! cap is reached the oldest unauthenticated one (from that peer, else from
//! anyone) is dropped to make room: a genuine peer authenticates within
//! milliseconds, so the oldest pending connection is the likeliest to be
//! hostile. Authenticated connections are capped in total (new ones are
//! refused beyond it) and never dropped to make room.

use std::collections::BTreeMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::{Arc, Mutex};

/// Unauthenticated connections one peer address may hold.
pub const PENDING_PER_PEER: usize = 16;
/// Unauthenticated connections in total.
pub const PENDING_TOTAL: usize = 64;
/// Authenticated connections in total.
pub const AUTHENTICATED_TOTAL: usize = 1024;

#[derive(Default)]
struct State {
    next: u64,
    /// Unauthenticated connections, oldest first (ids increase).
    pending: BTreeMap<u64, (IpAddr, TcpStream)>,
    authenticated: usize,
}

/// One listening port's connection caps.
pub struct Gate {
    state: Mutex<State>,
    caps: Caps,
}

/// The caps of a [`Gate`].
#[derive(Debug, Clone, Copy)]
struct Caps {
    per_peer: usize,
    total: usize,
    authenticated: usize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            state: Mutex::default(),
            caps: Caps { per_peer: PENDING_PER_PEER, total: PENDING_TOTAL, authenticated: AUTHENTICATED_TOTAL },
        }
    }
}

/// A connection admitted by a [`Gate`]; dropping it frees its place.
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    authenticated: bool,
}

/// Why a connection was not admitted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    #[error("{0} authenticated connections are open already")]
    Full(usize),
    #[error("cannot inspect the connection: {0}")]
    Io(#[from] std::io::Error),
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new, unauthenticated connection, dropping the oldest pending
    /// one if a cap is reached.
    pub fn admit(self: &Arc<Self>, conn: &TcpStream) -> Result<Ticket, GateError> {
        self.admit_from(conn.peer_addr()?.ip(), conn)
    }

    /// [`Gate::admit`] of a connection from `ip`.
    fn admit_from(self: &Arc<Self>, ip: IpAddr, conn: &TcpStream) -> Result<Ticket, GateError> {
        let handle = conn.try_clone()?;
        let mut st = self.lock();
        if st.authenticated >= self.caps.authenticated {
            return Err(GateError::Full(st.authenticated));
        }
        let from_peer = st.pending.values().filter(|(p, _)| *p == ip).count();
        let victim = if from_peer >= self.caps.per_peer {
            st.pending.iter().find(|(_, (p, _))| *p == ip).map(|(id, _)| *id)
        } else if st.pending.len() >= self.caps.total {
            st.pending.keys().next().copied()
        } else {
            None
        };
        if let Some((old_ip, old)) = victim.and_then(|v| st.pending.remove(&v)) {
            tracing::debug!("dropping an unauthenticated connection from {old_ip} to make room");
            // Its thread's next read or write fails and it ends.
            let _ = old.shutdown(Shutdown::Both);
        }
        st.next += 1;
        let id = st.next;
        st.pending.insert(id, (ip, handle));
        Ok(Ticket { gate: self.clone(), id, authenticated: false })
    }
}

impl Ticket {
    /// The connection has authenticated: it no longer counts as pending and
    /// is never dropped to make room. False if it was dropped meanwhile.
    pub fn authenticated(&mut self) -> bool {
        let mut st = self.gate.lock();
        if st.pending.remove(&self.id).is_none() {
            return false;
        }
        st.authenticated += 1;
        self.authenticated = true;
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        if self.authenticated {
            st.authenticated = st.authenticated.saturating_sub(1);
        } else {
            st.pending.remove(&self.id);
        }
    }
}

/// Counts of one gate (tests).
#[cfg(test)]
impl Gate {
    fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.pending.len(), st.authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_oldest_pending_connection_from_a_peer_makes_room() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let gate = Gate::new();
        let mut clients = Vec::new();
        let mut tickets = Vec::new();
        for _ in 0..PENDING_PER_PEER + 3 {
            clients.push(TcpStream::connect(addr).unwrap());
            let (s, _) = l.accept().unwrap();
            tickets.push((gate.admit(&s).unwrap(), s));
        }
        assert_eq!(gate.counts(), (PENDING_PER_PEER, 0));
        // The first three were dropped: they cannot authenticate any more.
        assert!(!tickets[0].0.authenticated());
        assert!(tickets[PENDING_PER_PEER + 2].0.authenticated());
        assert_eq!(gate.counts(), (PENDING_PER_PEER - 1, 1));
        tickets.clear();
        assert_eq!(gate.counts(), (0, 0));
    }

    /// `n` connected pairs (client, accepted) on `l`.
    fn pairs(l: &TcpListener, n: usize) -> Vec<(TcpStream, TcpStream)> {
        let addr = l.local_addr().unwrap();
        (0..n).map(|_| (TcpStream::connect(addr).unwrap(), l.accept().unwrap().0)).collect()
    }

    #[test]
    fn the_oldest_pending_connection_of_anyone_makes_room_past_the_total() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let gate = Arc::new(Gate { state: Mutex::default(), caps: Caps { per_peer: 3, total: 8, authenticated: 4 } });
        let conns = pairs(&l, 12);
        // Four peers, three connections each: within each peer's cap, but
        // twelve past the total of eight.
        let ip = |i: usize| IpAddr::from([10, 0, 0, (i / 3) as u8]);
        let mut tickets: Vec<Ticket> =
            conns.iter().enumerate().map(|(i, (_, s))| gate.admit_from(ip(i), s).unwrap()).collect();
        assert_eq!(gate.counts(), (8, 0));
        // The four oldest (peer 0's three and peer 1's first) were dropped:
        // their peers see the connection shut.
        for t in &mut tickets[..4] {
            assert!(!t.authenticated());
        }
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut &conns[0].0, &mut buf).unwrap(), 0, "dropped: end of stream");
        for t in &mut tickets[4..8] {
            assert!(t.authenticated());
        }
        assert_eq!(gate.counts(), (4, 4));
        // Authenticated ones are capped in total: a new connection is refused.
        let more = pairs(&l, 1);
        assert!(matches!(gate.admit_from(ip(0), &more[0].1), Err(GateError::Full(4))));
        // The pending ones leave; then the authenticated ones (tickets 4..8).
        drop(tickets.drain(8..));
        assert_eq!(gate.counts(), (0, 4));
        tickets.truncate(4);
        assert_eq!(gate.counts(), (0, 0), "every place freed");
    }
}
