//! The listener of `weir serve`: HTTP/1.1 on hyper, TLS through rustls
//! (ring) when `tls_cert` and `tls_key` are set. Listening on a
//! non-loopback address without TLS is refused unless the operator says
//! `--insecure`. A client has `read_timeout_ms` to send its headers (the
//! API gives the same to its body, and `request_timeout_ms` to the whole
//! request), the TLS handshake 10 s, a
//! connection lives at most 10 minutes, and at most [`MAX_CONNECTIONS`] are
//! open at once (the others are closed at accept): a slow or stuck client
//! cannot hold the server.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::ServeError;

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

/// A bound listener, ready to serve.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    header_timeout: Duration,
}

fn listen_err(m: String) -> ServeError {
    ServeError::Listen(m)
}

fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, ServeError> {
    let read = |p: &Path| {
        weir::files::read_limited(p, 1 << 20).map_err(|e| listen_err(format!("TLS file {}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| listen_err(format!("{}: not a PEM certificate chain: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(listen_err(format!("{}: no certificate in it", cert.display())));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| listen_err(format!("{}: not a PEM private key: {e}", key.display())))?
        .ok_or_else(|| listen_err(format!("{}: no private key in it", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| listen_err(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| listen_err(format!("TLS certificate and key: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

impl Listener {
    /// Binds `config.listen`; refuses a non-loopback address without TLS
    /// unless `insecure`.
    pub async fn bind(config: &Config, insecure: bool) -> Result<Listener, ServeError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.listen)
            .await
            .map_err(|e| listen_err(format!("listen = {:?}: {e}", config.listen)))?
            .collect();
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(load_tls(c, k)?),
            _ => None,
        };
        if tls.is_none() && !insecure && addrs.iter().any(|a| !a.ip().is_loopback()) {
            return Err(listen_err(format!(
                "listen = {:?} is not a loopback address: set tls_cert and tls_key in {}, or pass --insecure \
                 (tokens would cross the network in clear text)",
                config.listen,
                config.path.display()
            )));
        }
        let tcp = TcpListener::bind(addrs.as_slice())
            .await
            .map_err(|e| listen_err(format!("cannot listen on {}: {e}", config.listen)))?;
        Ok(Listener { tcp, tls, header_timeout: Duration::from_millis(config.read_timeout_ms) })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp.local_addr().ok()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves `router` until `shutdown` completes.
    pub async fn serve(self, router: axum::Router, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                r = self.tcp.accept() => r,
                () = &mut shutdown => return,
            };
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(target: "weir::serve", "accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let svc = TowerToHyperService::new(router.clone());
            let (tls, header_timeout) = (self.tls.clone(), self.header_timeout);
            tokio::spawn(async move {
                let _permit = permit;
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new()).header_read_timeout(header_timeout).max_buf_size(64 << 10);
                let conn = async {
                    match tls {
                        Some(acc) => {
                            if let Ok(Ok(s)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(stream)).await {
                                let _ = b.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                };
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
            });
        }
    }
}
