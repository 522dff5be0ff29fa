//! Certificate reload: each gateway's TLS files (`ca_file`, `client_cert_file`,
//! `client_key_file`) are polled like the other secret files, and when their content changes the
//! gateway's [`UpstreamClient`] is rebuilt from them.
//!
//! New connections use the new settings; calls already under way finish on the old client. When
//! the new files are unreadable or do not make a usable TLS config (a certificate with the wrong
//! key, half-written PEM), the old client stays in use and the problem is logged, with the file
//! names and the kind of problem only. Only a SHA-256 digest of each file is kept between polls,
//! not the key itself.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::client::UpstreamClient;
use super::tls::TlsFiles;
use crate::guard::AuthGuard;

/// What a poll saw of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Content([u8; 32]),
    Unreadable(std::io::ErrorKind),
}

#[derive(Debug)]
struct Watched {
    gateway: String,
    files: TlsFiles,
    client: UpstreamClient,
    /// Cleared of its transport backoff after a reload: the failures it backs off from may have
    /// been the old certificates'.
    guard: Option<Arc<AuthGuard>>,
    last: Vec<Seen>,
}

/// Watches the TLS files of `gateways` (name, files, client, guard) every `interval` until `stop`
/// turns true. Gateways without certificate files are not watched; the first look at the files
/// is taken now, when this is called, so call it right after the clients were built.
pub fn watch_tls<'a>(
    gateways: impl IntoIterator<
        Item = (
            &'a str,
            &'a TlsFiles,
            &'a UpstreamClient,
            &'a Arc<AuthGuard>,
        ),
    >,
    interval: Duration,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let watched: Vec<Watched> = gateways
        .into_iter()
        .filter(|(_, files, _, _)| paths(files).next().is_some())
        .map(|(gateway, files, client, guard)| Watched {
            gateway: gateway.to_owned(),
            files: files.clone(),
            client: client.clone(),
            guard: Some(Arc::clone(guard)),
            last: snapshot(files),
        })
        .collect();
    run(watched, interval, stop)
}

async fn run(mut watched: Vec<Watched>, interval: Duration, mut stop: watch::Receiver<bool>) {
    if watched.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = super::stopped(&mut stop) => return,
        }
        for w in &mut watched {
            poll(w);
        }
    }
}

/// Looks at one gateway's files and reloads its client if they changed since the last look.
/// Each change is acted on (and logged) once.
fn poll(w: &mut Watched) {
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
    use super::*;
    use payauth_sim::tls::SimCa;

    fn watched(files: TlsFiles) -> Watched {
        let client = UpstreamClient::new(&files, Duration::from_secs(1)).unwrap();
        Watched {
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

    #[tokio::test]
    async fn gateways_without_certificate_files_are_not_watched() {
        let files = TlsFiles::default();
        let client = UpstreamClient::new(&files, Duration::from_secs(1)).unwrap();
        let guard = AuthGuard::open(
            "g",
            crate::guard::GuardLimits::serial(1),
            crate::guard::Fingerprint::of(&[b"x"]),
            Arc::new(crate::guard::MemoryGuardStore::default()),
            crate::metrics::GatewayMetrics::unregistered("g"),
        )
        .unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        // Returns at once: nothing to watch.
        tokio::time::timeout(
            Duration::from_secs(5),
            watch_tls(
                [("g", &files, &client, &guard)],
                Duration::from_millis(10),
                stop,
            ),
        )
        .await
        .unwrap();
    }
}
