//! TLS origination: webpki roots, an optional private CA, an optional client certificate (mTLS).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;

use crate::config::TlsFiles;

/// Builds the rustls client config for a gateway from its files.
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &files.ca_file {
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no certificate found", ca.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let (chain, key) = client_identity(cert_path, key_path)?;
            let certified = rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
                .map_err(|e| format!("client_cert_file/client_key_file: {e}"))?;
            certified
                .keys_match()
                .map_err(|_| "client_cert_file and client_key_file do not belong together".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

fn client_identity(
    cert_path: &std::path::Path,
    key_path: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("client_cert_file {}: {e}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client_cert_file {}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!("client_cert_file {}: no certificate found", cert_path.display()));
    }
    // The key's own error text could quote the file; only say what kind of problem it was.
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|_| format!("client_key_file {}: no readable PEM private key", key_path.display()))?;
    Ok((chain, key))
}

/// Checks that the TLS files load and fit together (for `payauth check`).
pub fn check_files(files: &TlsFiles) -> Result<(), String> {
    if files.ca_file.is_none() && files.client_cert_file.is_none() {
        return Ok(());
    }
    client_config(files).map(|_| ())
}
