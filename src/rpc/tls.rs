//! Mutual TLS for the management port (rustls): the server presents its certificate and
//! requires a client certificate that chains to the configured CA, as VDSM does
//! (`CERT_REQUIRED`). The files are read at start and again on [`ServerTls::reload`] (SIGHUP);
//! a reload that fails keeps the old certificates, and connections already open are never
//! touched. The client side is used by the CLI and the tests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The three PEM files of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate (chain), PEM.
    pub cert: PathBuf,
    /// This side's private key, PEM.
    pub key: PathBuf,
    /// The CA the peer's certificate must chain to, PEM.
    pub ca: PathBuf,
}

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("cannot load {what} from {path}: {message}")]
    File {
        /// Certificate, key or CA.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the combination (key does not match, bad CA, ...).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    /// The server name given to the client is not a valid DNS name or address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error("private key", path, e))
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA certificate", path)? {
        roots
            .add(cert)
            .map_err(|e| file_error("CA certificate", path, e))?;
    }
    Ok(Arc::new(roots))
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let config_error = |e: rustls::Error| TlsError::Config(e.to_string());
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(load_roots(&files.ca)?, Arc::clone(&provider))
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs("certificate", &files.cert)?,
            load_key(&files.key)?,
        )
        .map_err(config_error)?;
    Ok(Arc::new(config))
}

/// The server's TLS settings, swappable at run time.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Loads the files; fails if any is missing or invalid.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Self {
            files,
            current: RwLock::new(config),
        })
    }

    /// Reads the files again; on success new connections use them, on failure nothing
    /// changes.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
        Ok(())
    }

    /// An acceptor with the current certificates.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        TlsAcceptor::from(config)
    }
}

/// A client that presents `files.cert` and trusts servers chaining to `files.ca`.
pub fn client_connector(files: &TlsFiles) -> Result<TlsConnector, TlsError> {
    let config_error = |e: rustls::Error| TlsError::Config(e.to_string());
    let roots = Arc::unwrap_or_clone(load_roots(&files.ca)?);
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(
            load_certs("certificate", &files.cert)?,
            load_key(&files.key)?,
        )
        .map_err(config_error)?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the server's certificate is checked against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName(host.to_owned()))
}
