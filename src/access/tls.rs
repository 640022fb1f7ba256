//! TLS for the decision listeners (rustls, ring provider): the server's
//! certificate, and the CA a client certificate must chain to; and the
//! identity a verified client certificate carries.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::config::TlsConfig;

use super::AccessError;

/// ALPN of the gRPC listener: HTTP/2 only, as gRPC requires.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of the HTTP listener.
pub const ALPN_HTTP: &[&[u8]] = &[b"http/1.1"];

/// The names a client certificate gives its holder: its URI SANs (a SPIFFE
/// ID among them) and its DNS SANs. Only read from certificates the
/// handshake verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uris: Vec<String>,
    /// Lower-cased.
    pub dns_names: Vec<String>,
}

impl PeerIdentity {
    /// The subject alternative names of `der`, an X.509 certificate; none
    /// if it does not parse (the handshake would have refused it first).
    pub fn of_certificate(der: &[u8]) -> Self {
        use x509_parser::extensions::GeneralName;
        let mut identity = Self::default();
        let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
            return identity;
        };
        if let Ok(Some(san)) = certificate.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => identity.dns_names.push(dns.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        identity
    }

    /// A short description for refusals and the service log: the SPIFFE
    /// ID, else the first DNS name (service identities, not people).
    pub fn describe(&self) -> String {
        self.uris
            .first()
            .or(self.dns_names.first())
            .cloned()
            .unwrap_or_else(|| "a certificate without URI or DNS names".to_owned())
    }
}

fn pem_error(path: &Path, what: &str, error: impl std::fmt::Display) -> AccessError {
    AccessError::File {
        path: path.to_owned(),
        problem: format!("cannot read {what}: {error}"),
    }
}

/// The certificates in a PEM file; at least one.
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, AccessError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, what, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, what, e))?;
    if certs.is_empty() {
        return Err(pem_error(path, what, "no `CERTIFICATE` block in it"));
    }
    Ok(certs)
}

/// Builds the server side of TLS from `config`, offering `alpn`.
///
/// # Errors
/// A file that cannot be read or holds no usable certificate or key, or a
/// key that does not match the certificate: [`AccessError::File`] naming
/// the file.
pub fn server_config(
    config: &TlsConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, AccessError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&config.cert_file, "the server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| pem_error(&config.key_file, "the private key", e))?;
    let verifier = match &config.client_ca_file {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path, "the client CA")? {
                roots
                    .add(cert)
                    .map_err(|e| pem_error(path, "the client CA", e))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                // A caller without a certificate may still present a token.
                .allow_unauthenticated()
                .build()
                .map_err(|e| pem_error(path, "the client CA", e))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pem_error(&config.cert_file, "TLS settings", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| AccessError::File {
            path: config.key_file.clone(),
            problem: format!(
                "does not go with the certificate in `{}`: {e}",
                config.cert_file.display()
            ),
        })?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}
