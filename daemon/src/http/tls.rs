//! TLS on the HTTP listener (RFC 6749 §1.6 and §2.3.1 require it for the token endpoint;
//! plain HTTP is for loopback or behind a TLS-terminating proxy).
//!
//! The certificate and key are read at start and again at every reload (SIGHUP, the admin
//! `Reload`), so a renewed certificate is served without a restart. The server config is
//! swapped atomically: handshakes in progress finish with the one they started with.

use std::{fs, io, os::unix::fs::MetadataExt, path::Path, sync::Arc};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::config::TlsFiles;

/// A certificate or key that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the TLS {what} {} is not usable: {reason}", path.display())]
    Invalid {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "the TLS key {} can be read by every user; `chmod o-rwx` it (group read is fine for a certificate group)",
        path.display()
    )]
    WorldReadable { path: std::path::PathBuf },
    #[error("the TLS key {} does not fit the certificate {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        reason: String,
    },
}

/// The TLS settings in force, replaceable at reload.
#[derive(Debug)]
pub struct Tls {
    current: ArcSwap<ServerConfig>,
}

impl Tls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::new(server_config(files)?),
        })
    }

    /// Re-reads the files; on an error the previous certificate keeps serving.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        self.current.store(server_config(files)?);
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let invalid = |what, path: &Path, reason: String| TlsError::Invalid {
        what,
        path: path.to_owned(),
        reason,
    };
    let cert_pem = read("certificate", &files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate", &files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(invalid(
            "certificate",
            &files.cert,
            "it holds no PEM CERTIFICATE block".into(),
        ));
    }

    let meta = fs::metadata(&files.key).map_err(|source| TlsError::Read {
        what: "key",
        path: files.key.clone(),
        source,
    })?;
    if meta.mode() & 0o004 != 0 {
        return Err(TlsError::WorldReadable {
            path: files.key.clone(),
        });
    }
    let key_pem = read("key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        invalid(
            "key",
            &files.key,
            format!("{e} (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"),
        )
    })?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // rustls speaks TLS 1.2 and 1.3 only, which is what RFC 9700 asks of OAuth servers.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("certificate", &files.cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
