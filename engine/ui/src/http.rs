//! A small HTTP/1.1 server for the status page: GET and HEAD only, one
//! request per connection, everything from the peer bounded (request head
//! at most 8 KiB, read within 10 s, at most 16 connections at once) and an
//! optional bearer token. The pages are a few kilobytes rendered from
//! memory, so a thread per connection is plenty, and no async runtime or
//! HTTP framework is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::listener::Shared;
use crate::Error;

const MAX_HEAD: usize = 8 * 1024;
const MAX_CONNECTIONS: usize = 16;
const READ_DEADLINE: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Ports tried after the asked one when it is taken (Spark: 16 by default).
const PORT_TRIES: u16 = 16;

/// A response: status, content type, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, content_type, body: body.into() }
    }
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }
}

/// A parsed request (what the pages need of it).
#[derive(Debug)]
pub struct Request {
    pub path: String,
    /// Decoded `key=value` pairs of the query string.
    pub query: Vec<(String, String)>,
    pub bearer: Option<String>,
    pub head: bool,
}

/// Whether every address `addr` names is a loopback address.
pub fn is_loopback(addr: &str) -> Result<bool, Error> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(|e| Error::Address(format!("{addr}: {e}")))?.collect();
    if addrs.is_empty() {
        return Err(Error::Address(format!("{addr}: no address")));
    }
    Ok(addrs.iter().all(|a| a.ip().is_loopback()))
}

/// Binds `addr`; if its port is taken, the next ones (port 0: any free port).
pub fn bind(addr: &str) -> Result<TcpListener, Error> {
    let first: SocketAddr = addr
        .to_socket_addrs()
        .map_err(|e| Error::Address(format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| Error::Address(format!("{addr}: no address")))?;
    let tries = if first.port() == 0 { 1 } else { PORT_TRIES };
    let mut last = None;
    for i in 0..tries {
        let mut a = first;
        a.set_port(first.port().saturating_add(i));
        match TcpListener::bind(a) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(Error::Bind { addr: a.to_string(), source: e }),
        }
    }
    Err(Error::Bind {
        addr: format!("{addr} (and the next {} ports)", tries - 1),
        source: last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)),
    })
}

/// Serves `shared` on `listener` from a thread of its own (for the life of
/// the process). Returns the bound address.
pub fn serve(listener: TcpListener, token: Option<String>, shared: Arc<Shared>) -> Result<SocketAddr, Error> {
    let addr = listener.local_addr().map_err(|e| Error::Bind { addr: "?".into(), source: e })?;
    let token = token.map(Arc::new);
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("weir-ui".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut stream) = conn else { continue };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
                    let _ = write_response(&mut stream, &Response::text(503, "busy\n"), false);
                    continue;
                }
                let (shared, token, active) = (shared.clone(), token.clone(), active.clone());
                let spawned = std::thread::Builder::new().name("weir-ui-conn".into()).spawn(move || {
                    handle(stream, token.as_deref().map(|t| t.as_str()), &shared);
                    active.fetch_sub(1, Ordering::AcqRel);
                });
                if spawned.is_err() {
                    tracing::debug!("status page: cannot start a connection thread");
                }
            }
        })
        .map_err(|e| Error::Bind { addr: addr.to_string(), source: e })?;
    Ok(addr)
}

fn handle(mut stream: TcpStream, token: Option<&str>, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let (resp, head) = match read_request(&mut stream) {
        Ok(req) => {
            let head = req.head;
            let resp = if authorized(&req, token) {
                crate::pages::route(&req, shared, token.is_some())
            } else {
                Response::text(401, "a token is required: Authorization: Bearer TOKEN or ?token=TOKEN\n")
            };
            (resp, head)
        }
        Err(resp) => {
            let _ = write_response(&mut stream, &resp, false);
            linger(&mut stream);
            return;
        }
    };
    let _ = write_response(&mut stream, &resp, head);
}

/// After refusing a request the peer may still be sending: closing with
/// unread bytes would reset the connection and lose the answer, so read
/// (and drop) a bounded amount for a bounded time first.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn authorized(req: &Request, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let given = req.bearer.as_deref().or_else(|| req.query.iter().find(|(k, _)| k == "token").map(|(_, v)| v.as_str()));
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes()))
}

/// Compares without returning early on the first difference (the time
/// taken does not tell how much of the token was right).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn read_request(stream: &mut TcpStream) -> Result<Request, Response> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Err(Response::text(431, "request head too large\n"));
        }
        if start.elapsed() > READ_DEADLINE {
            return Err(Response::text(408, "request timeout\n"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(Response::text(400, "incomplete request\n")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(Response::text(408, "request timeout\n")),
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| Response::text(400, "bad request\n"))?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Response::text(405, "only GET and HEAD\n")),
    };
    if !target.starts_with('/') {
        return Err(Response::text(400, "bad request target\n"));
    }
    let mut bearer = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("authorization") {
                bearer = v.trim().strip_prefix("Bearer ").map(|t| t.trim().to_string());
            }
        }
    }
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Request { path: percent_decode(path), query, bearer, head: head_only })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' => match (b.get(i + 1).and_then(|c| hex(*c)), b.get(i + 2).and_then(|c| hex(*c))) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value (for links that carry `?token=`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn write_response(stream: &mut TcpStream, r: &Response, head_only: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nContent-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 401 {
        out.push_str("WWW-Authenticate: Bearer\r\n");
    }
    out.push_str("\r\n");
    stream.write_all(out.as_bytes())?;
    if !head_only {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_compares() {
        assert_eq!(percent_decode("a%20b+c%zz%4"), "a b c%zz%4");
        assert_eq!(percent_decode(&percent_encode("t/k=n ?")), "t/k=n ?");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
