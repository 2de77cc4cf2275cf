//! TLS to the control planes: the CA their certificates are checked against
//! (`--control-plane-ca`) and the client certificate presented to them (`--control-plane-cert`,
//! `--control-plane-key`). Discovery reads the files again every round, so that a rotated
//! Kubernetes Secret is picked up: new connections use the new files, streams already open
//! finish on the old ones.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::ControlPlaneTls;

/// The PEM files' contents, checked to hold what they should.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientTls {
    ca: Vec<u8>,
    /// Certificate chain and private key.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the files `files` names; `None` when TLS is off (no `--control-plane-ca`).
    pub fn load(files: &ControlPlaneTls) -> Result<Option<Self>, String> {
        let Some(ca_path) = &files.ca else {
            if files.cert.is_some() || files.key.is_some() {
                return Err(
                    "--control-plane-cert and --control-plane-key need --control-plane-ca".into(),
                );
            }
            return Ok(None);
        };
        let ca = read_certificates("--control-plane-ca", ca_path)?;
        let identity = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some((
                read_certificates("--control-plane-cert", cert)?,
                read_key("--control-plane-key", key)?,
            )),
            (None, None) => None,
            _ => {
                return Err(
                    "--control-plane-cert and --control-plane-key go together: give both or neither"
                        .into(),
                );
            }
        };
        Ok(Some(Self { ca, identity }))
    }

    /// The channel's TLS settings for a control plane whose certificate names `server_name`.
    pub fn config(&self, server_name: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name(server_name);
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{flag} {}: {error}", path.display()))
}

fn read_certificates(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(flag, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{flag} {}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "{flag} {}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(pem)
}

fn read_key(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    let pem = read(flag, path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|error| format!("{flag} {}: no PEM private key: {error}", path.display()))?;
    Ok(pem)
}
