//! Certificate reload: each gateway's TLS files (`ca_file`, `client_cert_file`,
//! `client_key_file`) are polled like the other secret files, and when their content changes the
//! gateway's [`UpstreamClient`] is rebuilt from them.
//!
//! New connections use the new settings; calls already under way finish on the old client. When
//! the new files are unreadable or do not make a usable TLS config (a certificate with the wrong
//! key, half-written PEM), the old client stays in use and the problem is logged, with the file
//! names and the kind of problem only. Only a SHA-256 digest of each file is kept between polls,
//! not the key itself.

use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::client::UpstreamClient;
use super::tls::TlsFiles;
use crate::gateway::SharedState;

/// What a poll saw of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(std::io::ErrorKind),
}

/// One gateway's TLS files, as last seen, and the client they configure.
#[derive(Debug)]
pub struct TlsWatch {
    gateway: String,
    files: TlsFiles,
    client: UpstreamClient,
    /// Cleared of its transport backoff after a reload: the failures it backs off from may have
    /// been the old certificates'.
    guard: Option<SharedState>,
    last: Vec<Seen>,
}

impl TlsWatch {
    /// Watches `files` of `gateway`, whose `client` they configure; `None` when there are no
    /// certificate files. The first look is taken now: call it right after the client was built.
    pub fn new(
        gateway: &str,
        files: &TlsFiles,
        client: &UpstreamClient,
        guard: &SharedState,
    ) -> Option<Self> {
        paths(files).next()?;
        Some(Self {
            gateway: gateway.to_owned(),
            files: files.clone(),
            client: client.clone(),
            guard: Some(Arc::clone(guard)),
            last: snapshot(files),
        })
    }

    /// Looks at the files and reloads the client if they changed since the last look.
    pub fn poll(&mut self) {
        poll(self);
    }
}

/// Looks at one gateway's files and reloads its client if they changed since the last look.
/// Each change is acted on (and logged) once.
fn poll(w: &mut TlsWatch) {
    let now = snapshot(&w.files);
    if now == w.last {
        return;
    }
    w.last = now;
    if w.last.iter().any(|s| matches!(s, Seen::Unreadable(_))) {
        // Possibly mid-update; the next change is picked up when it comes.
        tracing::warn!(
            gateway = %w.gateway,
            "a certificate file is unreadable; keeping the current TLS settings"
        );
        return;
    }
    match w.client.reload(&w.files) {
        Ok(()) => {
            tracing::info!(
                gateway = %w.gateway,
                "certificate files changed; new connections use the new TLS settings"
            );
            if let Some(guard) = &w.guard {
                guard.clear_backoff();
            }
        }
        Err(error) => tracing::error!(
            gateway = %w.gateway,
            %error,
            "certificate files changed but cannot be used; keeping the current TLS settings"
        ),
    }
}

fn paths(files: &TlsFiles) -> impl Iterator<Item = &Path> {
    [
        &files.ca_file,
        &files.client_cert_file,
        &files.client_key_file,
    ]
    .into_iter()
    .flatten()
    .map(|p| p.as_path())
}

fn snapshot(files: &TlsFiles) -> Vec<Seen> {
    paths(files)
        .map(|path| match std::fs::read(path) {
            Ok(bytes) => Seen::Content(Sha256::digest(&bytes).into()),
            Err(e) => Seen::Unreadable(e.kind()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use payauth_sim::tls::SimCa;

    fn watched(files: TlsFiles) -> TlsWatch {
        let client = UpstreamClient::new(&files, Duration::from_secs(1)).unwrap();
        TlsWatch {
            gateway: "test".into(),
            last: snapshot(&files),
            files,
            client,
            guard: None,
        }
    }

    #[test]
    fn each_change_is_acted_on_once() {
        let ca = SimCa::new("ca").unwrap();
        let one = ca.client_cert("one").unwrap();
        let two = ca.client_cert("two").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client-key.pem");
        std::fs::write(&cert, &one.cert_pem).unwrap();
        std::fs::write(&key, &one.key_pem).unwrap();
        let files = TlsFiles {
            ca_file: None,
            client_cert_file: Some(cert.clone()),
            client_key_file: Some(key.clone()),
        };
        let mut w = watched(files);
        let first = w.last.clone();
        poll(&mut w);
        assert_eq!(w.last, first, "nothing changed");

        // Half an update: the new certificate with the old key. Seen, refused, not retried.
        std::fs::write(&cert, &two.cert_pem).unwrap();
        poll(&mut w);
        let half = w.last.clone();
        assert_ne!(half, first);
        poll(&mut w);
        assert_eq!(w.last, half);

        std::fs::write(&key, &two.key_pem).unwrap();
        poll(&mut w);
        assert_ne!(w.last, half);

        std::fs::remove_file(&key).unwrap();
        poll(&mut w);
        assert!(matches!(
            w.last[1],
            Seen::Unreadable(std::io::ErrorKind::NotFound)
        ));
    }

    #[test]
    fn gateways_without_certificate_files_are_not_watched() {
        let files = TlsFiles::default();
        let client = UpstreamClient::new(&files, Duration::from_secs(1)).unwrap();
        let guard: SharedState = crate::guard::AuthGuard::open(
            "g",
            crate::guard::GuardLimits::serial(1),
            crate::guard::Fingerprint::of(&[b"x"]),
            Arc::new(crate::guard::MemoryGuardStore::default()),
            crate::metrics::GatewayMetrics::unregistered("g"),
        )
        .unwrap();
        assert!(TlsWatch::new("g", &files, &client, &guard).is_none());
    }
}
