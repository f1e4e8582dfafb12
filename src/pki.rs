//! A small certificate authority for lab setups and tests (`rvdsm pki init DIR`): a CA, a host
//! certificate for rvdsmd and a client certificate for managers and the CLI, laid out as
//! VDSM's `/etc/pki/vdsm` (`certs/cacert.pem`, `certs/vdsmcert.pem`, `keys/vdsmkey.pem`) plus
//! `certs/clientcert.pem` and `keys/clientkey.pem`. Production hosts get their certificates
//! from the manager's CA instead.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::rpc::tls::TlsFiles;

/// Why certificates could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file already exists; nothing is overwritten.
    #[error("{0} already exists; remove it first or choose another directory")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What a certificate may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A TLS server (rvdsmd), which may also act as a client.
    Server,
    /// A TLS client (a manager, the CLI).
    Client,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key.
    pub key_pem: String,
}

/// A CA that signs host and client certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "rvdsm lab");
    name.push(DnType::CommonName, common_name);
    name
}

impl Authority {
    /// A new self-signed CA, valid for ten years.
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = named(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (params.not_before, params.not_after) = validity_from_now(Duration::days(3650));
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer, key_pem })
    }

    /// The CA's certificate and key.
    pub fn certificate(&self) -> Issued {
        Issued {
            cert_pem: self.issuer.pem(),
            key_pem: self.key_pem.clone(),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), valid from a day ago until
    /// `not_after`.
    pub fn issue(
        &self,
        common_name: &str,
        names: &[String],
        role: Role,
        not_after: OffsetDateTime,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = named(common_name);
        params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
        params.not_after = not_after;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        // A host certificate also authenticates the host as a client (vdsm-client on the host
        // presents it, as the rvdsm CLI does by default).
        params.extended_key_usages = match role {
            Role::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn validity_from_now(length: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - Duration::days(1), now + length)
}

/// The files [`init`] writes.
#[derive(Debug, Clone)]
pub struct LabFiles {
    /// The daemon's side (host certificate, key, CA).
    pub server: TlsFiles,
    /// A client's side (client certificate, key, CA).
    pub client: TlsFiles,
}

impl LabFiles {
    /// Where the files of a lab PKI in `dir` are.
    pub fn in_dir(dir: &Path) -> Self {
        let ca = dir.join("certs/cacert.pem");
        Self {
            server: TlsFiles {
                cert: dir.join("certs/vdsmcert.pem"),
                key: dir.join("keys/vdsmkey.pem"),
                ca: ca.clone(),
            },
            client: TlsFiles {
                cert: dir.join("certs/clientcert.pem"),
                key: dir.join("keys/clientkey.pem"),
                ca,
            },
        }
    }
}

/// Creates a CA, a host certificate for `host_names` (plus localhost and the loopback
/// addresses) and a client certificate in `dir`. Refuses to overwrite any file.
pub fn init(dir: &Path, host_names: &[String]) -> Result<LabFiles, PkiError> {
    let files = LabFiles::in_dir(dir);
    let ca_key = dir.join("keys/cakey.pem");
    let all = [
        &files.server.ca,
        &ca_key,
        &files.server.cert,
        &files.server.key,
        &files.client.cert,
        &files.client.key,
    ];
    if let Some(existing) = all.iter().find(|path| path.exists()) {
        return Err(PkiError::Exists((*existing).clone()));
    }
    let ca = Authority::new("rvdsm lab CA")?;
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    names.extend(host_names.iter().cloned());
    let (_, ten_years) = validity_from_now(Duration::days(3650));
    let host_cn = host_names.first().map_or("localhost", String::as_str);
    let host = ca.issue(host_cn, &names, Role::Server, ten_years)?;
    let client = ca.issue("rvdsm client", &[], Role::Client, ten_years)?;
    let ca_cert = ca.certificate();
    write_new(&files.server.ca, &ca_cert.cert_pem, 0o644)?;
    write_new(&ca_key, &ca_cert.key_pem, 0o600)?;
    write_new(&files.server.cert, &host.cert_pem, 0o644)?;
    write_new(&files.server.key, &host.key_pem, 0o600)?;
    write_new(&files.client.cert, &client.cert_pem, 0o644)?;
    write_new(&files.client.key, &client.key_pem, 0o600)?;
    Ok(files)
}

/// Writes a file that must not exist yet, with `mode` from the start.
pub fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_error)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::AlreadyExists => PkiError::Exists(path.to_owned()),
            _ => write_error(err),
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::tls::{ServerTls, client_connector};

    #[test]
    fn init_writes_files_that_load_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), &["host.example".to_owned()]).unwrap();
        ServerTls::load(files.server.clone()).unwrap();
        client_connector(&files.client).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.server.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(init(dir.path(), &[]), Err(PkiError::Exists(_))));
    }
}
