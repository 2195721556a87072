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
//!
//! The SASL password comes from the job file (`password`), the environment
//! (`password_env`) or a file (`password_file`, at most
//! [`MAX_PASSWORD_FILE_BYTES`], trailing line breaks dropped); whichever it
//! is, it stays in this process's memory and no error or `Debug` shows it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rskafka::client::{ClientBuilder, Credentials, SaslConfig};
use weir_plan::source::{KafkaSasl, KafkaTls, SaslMechanism};

/// The largest PEM file read (a CA bundle of the whole web is ~250 KiB).
const MAX_PEM_BYTES: u64 = 4 << 20;

/// The largest `sasl.password_file` read (as the cluster secret's file).
pub(crate) const MAX_PASSWORD_FILE_BYTES: u64 = 64 << 10;

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

/// Reads a PEM file of `field`, bounded (a regular file, and inside the
/// thread's confinement when it has one: `crate::files`).
fn read_pem(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    crate::files::read_data(path, MAX_PEM_BYTES).map_err(|e| format!("kafka {field} {}: {e}", path.display()))
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
        let sasl = sasl.map(|s| load_sasl(s, base)).transpose()?;
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

/// The password in `path` (`sasl.password_file`): a regular file of at most
/// [`MAX_PASSWORD_FILE_BYTES`], UTF-8, trailing `\n` / `\r` dropped (what
/// `echo` leaves), not empty. Errors name the key and the path, never the
/// contents.
fn read_password_file(path: &Path) -> Result<String, String> {
    let fail = |e: &dyn std::fmt::Display| format!("kafka sasl.password_file {}: {e}", path.display());
    let bytes = crate::files::read_data(path, MAX_PASSWORD_FILE_BYTES).map_err(|e| fail(&e))?;
    let mut text = String::from_utf8(bytes).map_err(|_| fail(&"not UTF-8 text"))?;
    let kept = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(kept);
    if text.is_empty() {
        return Err(fail(&"the file is empty: a password cannot be empty"));
    }
    Ok(text)
}

fn load_sasl(s: &KafkaSasl, base: &Path) -> Result<SaslConfig, String> {
    let password = match (&s.password, &s.password_env, &s.password_file) {
        (Some(p), None, None) => p.clone(),
        (None, Some(var), None) => std::env::var(var).map_err(|_| {
            format!("kafka sasl.password_env: the environment variable {var} is not set (or not UTF-8)")
        })?,
        (None, None, Some(file)) => read_password_file(&base.join(file))?,
        _ => {
            let given: Vec<&str> = [
                ("password", s.password.is_some()),
                ("password_env", s.password_env.is_some()),
                ("password_file", s.password_file.is_some()),
            ]
            .into_iter()
            .filter_map(|(k, set)| set.then_some(k))
            .collect();
            let found = if given.is_empty() { "none".to_string() } else { given.join(" and ") };
            return Err(format!(
                "kafka sasl: give exactly one of password, password_env and password_file (given: {found})"
            ));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sasl(password: Option<&str>, env: Option<&str>, file: Option<&str>) -> KafkaSasl {
        KafkaSasl {
            mechanism: SaslMechanism::Plain,
            username: "u".into(),
            password: password.map(Into::into),
            password_env: env.map(Into::into),
            password_file: file.map(Into::into),
        }
    }

    fn password_of(c: SaslConfig) -> String {
        match c {
            SaslConfig::Plain(c) | SaslConfig::ScramSha256(c) | SaslConfig::ScramSha512(c) => c.password,
            _ => unreachable!("only PLAIN and SCRAM are built"),
        }
    }

    #[test]
    fn exactly_one_password_source_is_given_and_the_error_names_the_keys() {
        let base = Path::new("/nonexistent");
        for (s, found) in [
            (sasl(None, None, None), "(given: none)"),
            (sasl(Some("p"), Some("HOME"), None), "(given: password and password_env)"),
            (sasl(Some("p"), None, Some("pw")), "(given: password and password_file)"),
            (sasl(None, Some("HOME"), Some("pw")), "(given: password_env and password_file)"),
            (sasl(Some("p"), Some("HOME"), Some("pw")), "(given: password and password_env and password_file)"),
        ] {
            let e = load_sasl(&s, base).unwrap_err();
            assert!(e.contains("exactly one of password, password_env and password_file") && e.contains(found), "{e}");
        }
        assert_eq!(password_of(load_sasl(&sasl(Some("inline"), None, None), base).unwrap()), "inline");
    }

    #[test]
    fn a_password_file_is_read_relative_to_the_job_bounded_and_trimmed_and_errors_name_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        let f = dir.path().join("secrets/kafka.pw");
        // Trailing line breaks go; inner and leading spaces stay (a password's own).
        std::fs::write(&f, " p4ss word \r\n\n").unwrap();
        let s = sasl(None, None, Some("secrets/kafka.pw"));
        assert_eq!(password_of(load_sasl(&s, dir.path()).unwrap()), " p4ss word ");
        // An absolute path is taken as is.
        let abs = sasl(None, None, Some(f.to_str().unwrap()));
        assert_eq!(password_of(load_sasl(&abs, Path::new("/elsewhere")).unwrap()), " p4ss word ");
        // Missing: the key and the full path.
        let e = load_sasl(&sasl(None, None, Some("secrets/nope")), dir.path()).unwrap_err();
        let want = format!("kafka sasl.password_file {}:", dir.path().join("secrets/nope").display());
        assert!(e.starts_with(&want) && e.contains("No such file"), "{e}");
        // Oversized: refused before it is read, naming the file and the limit.
        std::fs::write(&f, vec![b'a'; MAX_PASSWORD_FILE_BYTES as usize + 1]).unwrap();
        let e = load_sasl(&s, dir.path()).unwrap_err();
        assert!(
            e.contains("sasl.password_file") && e.contains("kafka.pw") && e.contains("over the limit of 65536"),
            "{e}"
        );
        // A device is not read for ever; empty and non-UTF-8 files are refused.
        let e = load_sasl(&sasl(None, None, Some("/dev/zero")), dir.path()).unwrap_err();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        let e = load_sasl(&s, dir.path()).unwrap_err();
        assert!(e.contains("kafka.pw") && e.contains("empty"), "{e}");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        let e = load_sasl(&s, dir.path()).unwrap_err();
        assert!(e.contains("kafka.pw") && e.contains("not UTF-8"), "{e}");
    }

    #[test]
    fn no_error_or_debug_shows_the_password_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "Hunter2-file\n").unwrap();
        let s = sasl(None, None, Some("pw"));
        let sec = KafkaSecurity::load(None, Some(&s), dir.path()).unwrap();
        assert!(!format!("{sec:?}").contains("Hunter2"), "{sec:?}");
        let spec = format!("{s:?}");
        assert!(spec.contains("password_file: Some(\"pw\")") && !spec.contains("Hunter2"), "{spec}");
        // A file that is not UTF-8 only because of its last byte: the error
        // names the file, not what it holds.
        std::fs::write(&f, b"Hunter2-file\xff").unwrap();
        let e = load_sasl(&s, dir.path()).unwrap_err();
        assert!(!e.contains("Hunter2"), "{e}");
    }
}
