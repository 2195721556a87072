//! TLS and SASL for the Kafka source and output (`[sources.NAME.tls]`,
//! `[sources.NAME.sasl]`, and `tls` / `sasl` tables on a Kafka output),
//! passed to rskafka: TLS through rustls (on ring, as the rest of Weir's
//! TLS) with the CA and client certificate files of the job, SASL PLAIN,
//! SCRAM-SHA-256 or SCRAM-SHA-512.
//!
//! Everything is read and checked when the job starts, not at the first
//! connection: a missing, unreadable, oversized or empty file is an error
//! naming the field (`tls.ca_file`) and the path, before any broker is
//! contacted. Files are untrusted input: each is bounded before it is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use weir_plan::source::{KafkaSasl, KafkaTls, SaslMechanism};

/// The largest PEM file read (a CA bundle of the whole web is ~250 KiB).
const MAX_PEM_BYTES: u64 = 4 << 20;

/// The TLS and SASL settings of one Kafka client, loaded.
#[derive(Clone, Default)]
pub(crate) struct KafkaSecurity {
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslConfig>,
}

impl std::fmt::Debug for KafkaSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "KafkaSecurity(tls: {}, sasl: {})", self.tls.is_some(), self.sasl.is_some())
    }
}

/// Reads a PEM file of `field`, bounded.
fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    let fail = |e: &dyn std::fmt::Display| format!("kafka {field} {}: {e}", path.display());
    let len = std::fs::metadata(path).map_err(|e| fail(&e))?.len();
    if len > MAX_PEM_BYTES {
        return Err(fail(&format!("{len} bytes, more than the {MAX_PEM_BYTES} allowed for a PEM file")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::open(path).map_err(|e| fail(&e))?, MAX_PEM_BYTES),
        &mut bytes,
    )
    .map_err(|e| fail(&e))?;
    Ok(bytes)
}

fn certificates(field: &str, path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let pem = read_pem(field, path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("kafka {field} {}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("kafka {field} {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

impl KafkaSecurity {
    /// Loads `tls` and `sasl`; relative paths are under `base` (the job
    /// file's folder).
    pub(crate) fn load(tls: Option<&KafkaTls>, sasl: Option<&KafkaSasl>, base: &Path) -> Result<Self, String> {
        let tls = tls.map(|t| load_tls(t, base)).transpose()?;
        let sasl = sasl.map(load_sasl).transpose()?;
        Ok(KafkaSecurity { tls, sasl })
    }

    /// The builder with these settings.
    pub(crate) fn apply(&self, mut b: ClientBuilder) -> ClientBuilder {
        if let Some(t) = &self.tls {
            b = b.tls_config(t.clone());
        }
        if let Some(s) = &self.sasl {
            b = b.sasl_config(s.clone());
        }
        b
    }
}

fn load_tls(t: &KafkaTls, base: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let at = |p: &PathBuf| base.join(p);
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca_file {
        Some(ca) => {
            let path = at(ca);
            for c in certificates("tls.ca_file", &path)? {
                roots.add(c).map_err(|e| format!("kafka tls.ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            // The system's roots (a broker with a public certificate).
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("kafka tls: no tls.ca_file given and no system root certificates found".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("kafka tls: {e}"))?
        .with_root_certificates(roots);
    let config = match (&t.cert_file, &t.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = certificates("tls.cert_file", &at(cert))?;
            let key_path = at(key);
            let pem = read_pem("tls.key_file", &key_path)?;
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| format!("kafka tls.key_file {}: not PEM: {e}", key_path.display()))?
                .ok_or_else(|| format!("kafka tls.key_file {}: no PEM private key in it", key_path.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("kafka tls.cert_file / tls.key_file {}: {e}", key_path.display()))?
        }
        (Some(_), None) => return Err("kafka tls: cert_file is given without key_file (both or neither)".into()),
        (None, Some(_)) => return Err("kafka tls: key_file is given without cert_file (both or neither)".into()),
    };
    Ok(Arc::new(config))
}

fn load_sasl(s: &KafkaSasl) -> Result<SaslConfig, String> {
    let password = match (&s.password, &s.password_env) {
        (Some(p), None) => p.clone(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            format!("kafka sasl.password_env: the environment variable {var} is not set (or not UTF-8)")
        })?,
        _ => return Err("kafka sasl: give exactly one of password and password_env".into()),
    };
    if s.username.is_empty() {
        return Err("kafka sasl.username is empty".into());
    }
    let c = Credentials::new(s.username.clone(), password);
    Ok(match s.mechanism {
        SaslMechanism::Plain => SaslConfig::Plain(c),
        SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
        SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
    })
}
