//! HTTPS for the simulators: a throwaway certificate authority and the server side of TLS.
//!
//! [`SimCa`] makes a CA and certificates signed by it (server certificates for names and IP
//! addresses, client certificates for mTLS); [`SimTls`] turns a certificate chain and key into a
//! tokio-rustls acceptor, optionally requiring client certificates from a given CA. Used by the
//! tests, `payauth simulate --tls` and any simulator that wants to serve HTTPS.
//!
//! ```
//! use payauth_sim::tls::SimCa;
//!
//! # fn main() -> Result<(), payauth_sim::tls::SimTlsError> {
//! let ca = SimCa::new("payauth test CA")?;
//! let server = ca.server_tls(&["localhost", "127.0.0.1"])?;
//! let _acceptor = server.acceptor()?; // serve with it; point the client's `ca_file` at ca.cert_pem()
//! # Ok(())
//! # }
//! ```
//!
//! Everything here is for development and tests: keys are generated in memory, certificates are
//! valid for centuries and nothing is revoked.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate or a TLS server setting could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SimTlsError(String);

impl From<rcgen::Error> for SimTlsError {
    fn from(e: rcgen::Error) -> Self {
        SimTlsError(format!("certificate generation: {e}"))
    }
}

impl From<rustls::Error> for SimTlsError {
    fn from(e: rustls::Error) -> Self {
        SimTlsError(format!("tls settings: {e}"))
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertAndKey {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

// Hand-written: even a test key is not printed.
impl fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertAndKey")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A throwaway certificate authority (ECDSA P-256), kept in memory.
pub struct SimCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for SimCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimCa").finish_non_exhaustive()
    }
}

impl SimCa {
    /// A new CA whose certificate has `common_name` as its subject.
    pub fn new(common_name: &str) -> Result<Self, SimTlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate (PEM): what a client's `ca_file` holds.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names`: DNS names, or IP addresses (which become IP SANs).
    pub fn server_cert(&self, names: &[&str]) -> Result<CertAndKey, SimTlsError> {
        let common_name = names.first().copied().unwrap_or("simulator");
        self.issue(
            names.iter().map(|n| (*n).to_owned()).collect(),
            common_name,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate (for mTLS) with `common_name` as its subject.
    pub fn client_cert(&self, common_name: &str) -> Result<CertAndKey, SimTlsError> {
        self.issue(Vec::new(), common_name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// Server TLS settings with a certificate from this CA for `names`, no client certificates.
    pub fn server_tls(&self, names: &[&str]) -> Result<SimTls, SimTlsError> {
        let CertAndKey { cert_pem, key_pem } = self.server_cert(names)?;
        Ok(SimTls {
            cert_chain_pem: cert_pem,
            key_pem,
            client_ca_pem: None,
        })
    }

    fn issue(
        &self,
        names: Vec<String>,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertAndKey, SimTlsError> {
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A simulator's server-side TLS settings, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct SimTls {
    /// The server certificate chain, leaf first.
    pub cert_chain_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// When set, clients must present a certificate signed by one of these CA certificates
    /// (mTLS); a handshake without one fails.
    pub client_ca_pem: Option<String>,
}

// Hand-written: the key is not printed.
impl fmt::Debug for SimTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimTls")
            .field(
                "cert_chain_pem",
                &format_args!("<{} bytes>", self.cert_chain_pem.len()),
            )
            .field("key_pem", &"<redacted>")
            .field(
                "client_ca_pem",
                &self.client_ca_pem.as_ref().map(|_| "<set>"),
            )
            .finish()
    }
}

impl SimTls {
    /// Requires client certificates signed by `ca_pem` (mTLS).
    pub fn require_client_certs(mut self, ca_pem: &str) -> Self {
        self.client_ca_pem = Some(ca_pem.to_owned());
        self
    }

    /// The rustls server config (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
    pub fn server_config(&self) -> Result<ServerConfig, SimTlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = pem_certs("cert_chain_pem", self.cert_chain_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| SimTlsError("key_pem: no readable PEM private key".into()))?;
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()?;
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca_pem) => {
                let mut roots = RootCertStore::empty();
                for cert in pem_certs("client_ca_pem", ca_pem.as_bytes())? {
                    roots.add(cert)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| SimTlsError(format!("client_ca_pem: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A tokio-rustls acceptor for these settings.
    pub fn acceptor(&self) -> Result<TlsAcceptor, SimTlsError> {
        Ok(TlsAcceptor::from(Arc::new(self.server_config()?)))
    }
}

fn pem_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, SimTlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SimTlsError(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(SimTlsError(format!("{what}: no certificate found")));
    }
    Ok(certs)
}

/// Runs the server side of the handshake on `stream`, giving up after ten seconds.
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "tls handshake timed out",
        )),
    }
}

/// What [`dev_pki`] made: the server settings and the files a payauth config points at.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The simulator's server settings.
    pub tls: SimTls,
    /// The CA certificate, for `ca_file`.
    pub ca_file: PathBuf,
    /// With mTLS: the client certificate and key, for `client_cert_file` / `client_key_file`.
    pub client_files: Option<(PathBuf, PathBuf)>,
}

/// Makes a fresh CA and a server certificate for `localhost`, `127.0.0.1`, `::1` and
/// `listen_ip` (unless unspecified), and writes the CA certificate to `dir/ca.pem`. With `mtls`,
/// client certificates are required and a client certificate and key from the same CA are
/// written to `dir/client.pem` and `dir/client-key.pem` (the key readable by its owner only).
/// For `payauth simulate --tls`.
pub fn dev_pki(dir: &Path, listen_ip: IpAddr, mtls: bool) -> Result<DevPki, SimTlsError> {
    // A name of its own: CAs of earlier runs with the same name would make verification report
    // a bad signature instead of an unknown issuer.
    let ca = SimCa::new(&format!("payauth simulate CA {:08x}", fastrand::u32(..)))?;
    let listen = listen_ip.to_string();
    let mut names = vec!["localhost", "127.0.0.1", "::1"];
    if !listen_ip.is_unspecified() && !names.contains(&listen.as_str()) {
        names.push(&listen);
    }
    let mut tls = ca.server_tls(&names)?;
    let write = |name: &str, text: &str, private: bool| -> Result<PathBuf, SimTlsError> {
        let path = dir.join(name);
        write_file(&path, text, private)
            .map_err(|e| SimTlsError(format!("cannot write {}: {e}", path.display())))?;
        Ok(path)
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| SimTlsError(format!("cannot create {}: {e}", dir.display())))?;
    let ca_file = write("ca.pem", ca.cert_pem(), false)?;
    let client_files = if mtls {
        tls = tls.require_client_certs(ca.cert_pem());
        let client = ca.client_cert("payauth")?;
        Some((
            write("client.pem", &client.cert_pem, false)?,
            write("client-key.pem", &client.key_pem, true)?,
        ))
    } else {
        None
    };
    Ok(DevPki {
        tls,
        ca_file,
        client_files,
    })
}

fn write_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    if private {
        // `mode` only applies to a new file; an older one keeps its permissions otherwise.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = private;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_load_into_rustls() {
        let ca = SimCa::new("test CA").unwrap();
        let tls = ca
            .server_tls(&["localhost", "127.0.0.1"])
            .unwrap()
            .require_client_certs(ca.cert_pem());
        tls.server_config().unwrap();
        let client = ca.client_cert("client").unwrap();
        assert!(client.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(client.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn debug_output_hides_keys() {
        let ca = SimCa::new("test CA").unwrap();
        let tls = ca.server_tls(&["localhost"]).unwrap();
        let client = ca.client_cert("client").unwrap();
        for shown in [format!("{tls:?}"), format!("{client:?}"), format!("{ca:?}")] {
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            assert!(!shown.contains("CERTIFICATE"), "{shown}");
        }
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused() {
        let ca = SimCa::new("test CA").unwrap();
        let mut tls = ca.server_tls(&["localhost"]).unwrap();
        tls.key_pem = "not a key".into();
        let err = tls.server_config().unwrap_err().to_string();
        assert!(err.contains("key_pem"), "{err}");
    }
}
