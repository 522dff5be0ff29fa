//! TLS origination: webpki roots, an optional private CA, an optional client certificate (mTLS).
//!
//! The gateway's certificate files are read here, both to build the rustls client config
//! ([`client_config`], at start and on every reload) and to report what is wrong with them
//! ([`check_files`], for `payauth check`). Messages name the file and the kind of problem, never
//! the file's content.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, InconsistentKeys, RootCertStore};

/// Certificate files for TLS origination.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Extra trusted CA certificates (PEM), added to the webpki roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate chain (PEM) for mTLS.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Client private key (PEM) for mTLS.
    pub client_key_file: Option<std::path::PathBuf>,
}

/// Builds the rustls client config for a gateway from its files (the first problem found is
/// the error).
pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(ca) = &files.ca_file {
        add_ca_file(&mut roots, ca)?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls settings: {e}"))?
        .with_root_certificates(roots);
    match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let (chain, key) = client_identity(cert_path, key_path, &provider)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| identity_problem(cert_path, key_path, &e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Checks that the TLS files load and fit together (for `payauth check`), reporting every
/// problem: an unreadable file, a file without a PEM certificate or key, a CA certificate
/// rustls refuses, a client certificate and key that do not belong together.
pub fn check_files(files: &TlsFiles) -> Result<(), Vec<String>> {
    let provider = rustls::crypto::ring::default_provider();
    let mut problems = Vec::new();
    if let Some(ca) = &files.ca_file {
        if let Err(e) = add_ca_file(&mut RootCertStore::empty(), ca) {
            problems.push(e);
        }
    }
    match (&files.client_cert_file, &files.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            if let Err(e) = client_identity(cert_path, key_path, &provider) {
                problems.push(e);
            }
        }
        (Some(_), None) | (None, Some(_)) => {
            problems.push("client_cert_file and client_key_file go together".to_owned());
        }
        (None, None) => {}
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), String> {
    for cert in certificates("ca_file", path)? {
        roots.add(cert).map_err(|e| {
            format!(
                "ca_file {}: not a usable CA certificate: {e}",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Reads the client certificate chain and key, both checked: every problem with either file is
/// reported (joined), then whether they belong together.
fn client_identity(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain = certificates("client_cert_file", cert_path);
    let key = private_key(key_path);
    let (chain, key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
        (Err(cert_e), Err(key_e)) => return Err(format!("{cert_e}; {key_e}")),
    };
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), provider)
        .map_err(|e| identity_problem(cert_path, key_path, &e))?;
    Ok((chain, key))
}

fn identity_problem(cert_path: &Path, key_path: &Path, e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => format!(
            "client_cert_file {} and client_key_file {} do not belong together: the key is not \
             the certificate's",
            cert_path.display(),
            key_path.display()
        ),
        // rustls's own text here names the key type or the certificate encoding, not the key.
        other => format!(
            "client_cert_file {} / client_key_file {}: unusable: {other}",
            cert_path.display(),
            key_path.display()
        ),
    }
}

fn certificates(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what} {}: {}", path.display(), pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate found",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let problem = match e {
            pem::Error::NoItemsFound => "no PEM private key found".to_owned(),
            other => pem_problem(&other),
        };
        format!("client_key_file {}: {problem}", path.display())
    })
}

/// Describes a PEM problem without quoting the file (some variants carry a line of it).
fn pem_problem(e: &pem::Error) -> String {
    match e {
        pem::Error::Io(io) => format!("cannot read: {io}"),
        pem::Error::NoItemsFound => "no PEM item found".to_owned(),
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        pem::Error::SectionTooLarge => "a PEM section is too large".to_owned(),
        _ => "not readable PEM".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use payauth_sim::tls::SimCa;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        }

        fn missing(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn problems(files: &TlsFiles) -> Vec<String> {
        check_files(files).err().unwrap_or_default()
    }

    #[test]
    fn good_files_pass_and_build_a_client_config() {
        let ca = SimCa::new("ca").unwrap();
        let client = ca.client_cert("client").unwrap();
        let f = Files::new();
        let files = TlsFiles {
            ca_file: Some(f.write("ca.pem", ca.cert_pem())),
            client_cert_file: Some(f.write("client.pem", &client.cert_pem)),
            client_key_file: Some(f.write("client-key.pem", &client.key_pem)),
        };
        assert_eq!(check_files(&files), Ok(()));
        let config = client_config(&files).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
        assert_eq!(check_files(&TlsFiles::default()), Ok(()));
        assert!(!client_config(&TlsFiles::default())
            .unwrap()
            .client_auth_cert_resolver
            .has_certs());
    }

    #[test]
    fn a_certificate_with_another_key_is_refused() {
        let ca = SimCa::new("ca").unwrap();
        let one = ca.client_cert("one").unwrap();
        let other = ca.client_cert("other").unwrap();
        let f = Files::new();
        let cert = f.write("client.pem", &one.cert_pem);
        let key = f.write("client-key.pem", &other.key_pem);
        let files = TlsFiles {
            ca_file: None,
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(key.clone()),
        };
        let found = problems(&files);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("do not belong together"), "{found:?}");
        assert!(found[0].contains(&cert.display().to_string()), "{found:?}");
        assert!(found[0].contains(&key.display().to_string()), "{found:?}");
        let err = client_config(&files).unwrap_err();
        assert!(err.contains("do not belong together"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let f = Files::new();
        let files = TlsFiles {
            ca_file: Some(f.missing("ca.pem")),
            client_cert_file: Some(f.missing("client.pem")),
            client_key_file: Some(f.missing("client-key.pem")),
        };
        let found = problems(&files);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("ca_file "), "{found:?}");
        assert!(found[0].contains("cannot read"), "{found:?}");
        assert!(found[1].contains("client_cert_file "), "{found:?}");
        assert!(found[1].contains("client_key_file "), "{found:?}");
        assert!(client_config(&files).unwrap_err().starts_with("ca_file "));
    }

    #[test]
    fn files_without_pem_content_are_refused_without_quoting_them() {
        let ca = SimCa::new("ca").unwrap();
        let client = ca.client_cert("client").unwrap();
        let f = Files::new();
        // A key where the CA certificate should be, a certificate where the key should be.
        let files = TlsFiles {
            ca_file: Some(f.write("ca.pem", &client.key_pem)),
            client_cert_file: Some(f.write("client.pem", "hello, not a certificate\n")),
            client_key_file: Some(f.write("client-key.pem", &client.cert_pem)),
        };
        let found = problems(&files);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("ca_file") && found[0].contains("no PEM certificate found"));
        assert!(found[1].contains("client_cert_file") && found[1].contains("no PEM certificate"));
        assert!(found[1].contains("client_key_file") && found[1].contains("no PEM private key"));
        let shown = found.join("\n");
        assert!(!shown.contains("hello"), "{shown}");
        let key_body = client.key_pem.lines().nth(1).unwrap();
        assert!(!shown.contains(key_body), "{shown}");
    }

    #[test]
    fn broken_pem_is_described_not_quoted() {
        let f = Files::new();
        let secretish = "c2VjcmV0LWJ5dGVz";
        let files = TlsFiles {
            ca_file: Some(f.write(
                "ca.pem",
                &format!("-----BEGIN CERTIFICATE-----\n{secretish}\n"),
            )),
            client_cert_file: None,
            client_key_file: None,
        };
        let found = problems(&files);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("no END line"), "{found:?}");
        assert!(!found[0].contains(secretish));
    }

    #[test]
    fn dev_pki_writes_the_files_a_config_needs() {
        let dir = std::env::temp_dir().join(format!("payauth-dev-pki-{}", std::process::id()));
        let pki =
            payauth_sim::tls::dev_pki(&dir, std::net::IpAddr::from([127, 0, 0, 1]), true).unwrap();
        let ca = std::fs::read_to_string(&pki.ca_file).unwrap();
        assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
        let (cert, key) = pki.client_files.clone().unwrap();
        let files = TlsFiles {
            ca_file: Some(pki.ca_file.clone()),
            client_cert_file: Some(cert),
            client_key_file: Some(key.clone()),
        };
        check_files(&files).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the client key is private");
        }
        assert!(pki.tls.client_ca_pem.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
