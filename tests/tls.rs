//! TLS origination, black-box: the Number simulator serving HTTPS (with a CA made here), the
//! sidecar in front of it, and the `ca_file` / `client_cert_file` / `client_key_file` settings,
//! their check and their reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use payauth::config::Config;
use payauth::sidecar::Sidecar;
use payauth_sim::number::{NumberSim, NumberSimConfig};
use payauth_sim::tls::{CertAndKey, SimCa, SimTls};

/// The CA the simulator's server certificate comes from, and the certificate itself.
struct Pki {
    dir: tempfile::TempDir,
    ca: SimCa,
    server: SimTls,
}

impl Pki {
    fn new() -> Self {
        let ca = SimCa::new("payauth test CA").expect("ca");
        let server = ca
            .server_tls(&["localhost", "127.0.0.1"])
            .expect("server cert");
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            ca,
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        let path = self.path("ca.pem");
        std::fs::write(&path, self.ca.cert_pem()).expect("ca.pem");
        path
    }

    /// Writes a client certificate and key (as Kubernetes would update a Secret: renamed into
    /// place) and returns the config lines naming them.
    fn client_files(&self, pair: &CertAndKey) -> String {
        write_atomically(&self.path("client.pem"), &pair.cert_pem);
        write_atomically(&self.path("client-key.pem"), &pair.key_pem);
        format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            self.path("client.pem").display(),
            self.path("client-key.pem").display()
        )
    }
}

async fn https_sim(tls: SimTls) -> NumberSim {
    number_sim(NumberSimConfig {
        tls: Some(tls),
        ..NumberSimConfig::default()
    })
    .await
}

fn config_text(dir: &Path, upstream: &str, tls_lines: &str) -> String {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("token");
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[state]
dir = "{state}"
[proxy]
secret_poll_secs = 0.05
shutdown_grace_secs = 2
[[gateway]]
name = "number"
kind = "number"
listen = "127.0.0.1:0"
upstream = "{upstream}"
account_code = "EP9116875"
token_file = "{token}"
request_timeout_secs = 10
connect_timeout_secs = 5
{tls_lines}"#,
        state = dir.join("state").display(),
        token = dir.join("token").display(),
    )
}

async fn sidecar(dir: &Path, upstream: &str, tls_lines: &str) -> (Sidecar, std::net::SocketAddr) {
    let config = Config::parse(&config_text(dir, upstream, tls_lines)).expect("valid config");
    let sidecar = Sidecar::start(config).await.expect("sidecar starts");
    let addr = sidecar.gateway_addr("number").expect("listener");
    (sidecar, addr)
}

/// A refused handshake proves nothing was sent: the lockout guard counts no authentication
/// of unknown outcome (five of those would lock the gateway).
fn assert_not_sent(sidecar: &Sidecar) {
    let status = sidecar.gateways()[0].running.guard().status();
    assert_eq!(status.record.unconfirmed, 0, "{status:?}");
    assert!(!status.record.locked, "{status:?}");
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused_and_nothing_is_sent() {
    let pki = Pki::new();
    let sim = https_sim(pki.server.clone()).await;
    assert!(sim.url().starts_with("https://127.0.0.1:"), "{}", sim.url());
    // No ca_file: the webpki roots do not know the test CA.
    let (sidecar, addr) = sidecar(pki.dir.path(), &sim.url(), "").await;
    let client = client();
    let reply = sale(&client, addr).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code().as_deref(), Some("auth_unavailable"));
    let stats = sim.stats();
    assert_eq!((stats.auth_attempts, stats.calls), (0, 0), "{stats:?}");
    assert!(stats.tls_handshake_failures >= 1, "{stats:?}");
    assert_not_sent(&sidecar);
    sidecar.shutdown().await;
}

#[tokio::test]
async fn a_private_ca_in_ca_file_is_trusted() {
    let pki = Pki::new();
    let sim = https_sim(pki.server.clone()).await;
    let ca_line = format!("ca_file = \"{}\"\n", pki.ca_file().display());
    // By IP address (an IP SAN) and by name (a DNS SAN).
    for upstream in [
        sim.url(),
        format!("https://localhost:{}", sim.addr().port()),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sidecar, addr) = sidecar(dir.path(), &upstream, &ca_line).await;
        let client = client();
        for _ in 0..3 {
            let reply = sale(&client, addr).await;
            assert!(
                approved(&reply, "CreditCardSale_Manual"),
                "{upstream}: {}",
                reply.text()
            );
        }
        sidecar.shutdown().await;
    }
    let stats = sim.stats();
    assert_eq!((stats.auth_success, stats.calls_ok), (2, 6), "{stats:?}");
    assert_eq!(stats.tls_handshake_failures, 0);
}

#[tokio::test]
async fn mtls_succeeds_only_with_the_client_certificate() {
    let pki = Pki::new();
    let sim = https_sim(pki.server.clone().require_client_certs(pki.ca.cert_pem())).await;
    let ca_line = format!("ca_file = \"{}\"\n", pki.ca_file().display());

    // Without a client certificate: refused during the handshake, nothing reaches the gateway.
    let dir = tempfile::tempdir().expect("tempdir");
    let (without, addr) = sidecar(dir.path(), &sim.url(), &ca_line).await;
    let client = client();
    let reply = sale(&client, addr).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("auth_unavailable"),
        "{}",
        reply.text()
    );
    let stats = sim.stats();
    assert_eq!((stats.auth_attempts, stats.calls), (0, 0), "{stats:?}");
    assert!(stats.tls_handshake_failures >= 1, "{stats:?}");
    assert_not_sent(&without);
    without.shutdown().await;

    // With one from an impostor CA of the same name: its signature does not verify (rustls
    // answers `decrypt_error`), still nothing was sent.
    let impostor = SimCa::new("payauth test CA").expect("ca");
    let forged = impostor.client_cert("payauth").expect("client cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = format!("{ca_line}{}", pki.client_files(&forged));
    let (forged_side, addr) = sidecar(dir.path(), &sim.url(), &lines).await;
    let reply = sale(&client, addr).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("auth_unavailable"),
        "{}",
        reply.text()
    );
    assert_eq!(sim.stats().calls, 0);
    assert_not_sent(&forged_side);
    forged_side.shutdown().await;

    // With one from the CA the simulator trusts.
    let pair = pki.ca.client_cert("payauth").expect("client cert");
    let lines = format!("{ca_line}{}", pki.client_files(&pair));
    let (with, addr) = sidecar(pki.dir.path(), &sim.url(), &lines).await;
    let reply = sale(&client, addr).await;
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "{}",
        reply.text()
    );
    assert_eq!(sim.stats().calls_ok, 1);
    with.shutdown().await;
}

/// Counts the log lines that contain `needle` (the fmt subscriber hands each event to its writer
/// in one write).
#[derive(Clone)]
struct LogCounter {
    needle: &'static str,
    count: Arc<AtomicUsize>,
}

impl LogCounter {
    fn new(needle: &'static str) -> Self {
        Self {
            needle,
            count: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

impl std::io::Write for LogCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let needle = self.needle.as_bytes();
        if buf.windows(needle.len()).any(|w| w == needle) {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCounter {
    type Writer = LogCounter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn client_certificate_files_are_reloaded_without_a_restart() {
    // The file poller runs on this test's current-thread runtime, so a thread-local subscriber
    // sees its log lines: they say when it has looked at (and refused) a broken update.
    let refusals = LogCounter::new("certificate files changed but cannot be used");
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(refusals.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let pki = Pki::new();
    let sim = https_sim(pki.server.clone().require_client_certs(pki.ca.cert_pem())).await;
    let ca_line = format!("ca_file = \"{}\"\n", pki.ca_file().display());
    // A client certificate from a CA the simulator does not trust.
    let stranger = SimCa::new("another CA").expect("ca");
    let untrusted = stranger.client_cert("payauth").expect("client cert");
    let lines = format!("{ca_line}{}", pki.client_files(&untrusted));
    let (sidecar, addr) = sidecar(pki.dir.path(), &sim.url(), &lines).await;
    let client = client();
    let reply = sale(&client, addr).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("auth_unavailable"),
        "{}",
        reply.text()
    );
    assert_eq!(sim.stats().calls, 0);
    let refused = sim.stats().tls_handshake_failures;
    assert!(refused >= 1);
    assert_not_sent(&sidecar);

    // The operator replaces the pair; no restart. The first failure left a short backoff
    // (about a second) on authentication, so allow a few seconds.
    let trusted = pki.ca.client_cert("payauth").expect("client cert");
    pki.client_files(&trusted);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        let reply = sale(&client, addr).await;
        if approved(&reply, "CreditCardSale_Manual") {
            last = None;
            break;
        }
        last = Some(reply.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, None, "calls never succeeded after the reload");
    assert_eq!(sim.stats().calls_ok, 1);

    // A broken update (a key that is not the certificate's) is refused; the client in use stays.
    // One dropped connection makes the next call open a new one, with the settings in use.
    // Counted from here: a handshake refused before the reload was picked up (possible when this
    // machine is slow) is not this update's.
    let failures_before = sim.stats().tls_handshake_failures;
    // The reload above wrote the certificate, then the key: the poller may have refused the
    // mismatched pair in between. Only a refusal after this point is the broken update's.
    let refusals_before = refusals.count();
    let other = pki.ca.client_cert("other").expect("client cert");
    write_atomically(&pki.path("client-key.pem"), &other.key_pem);
    let refused_update = eventually(Duration::from_secs(20), || {
        refusals.count() > refusals_before
    })
    .await;
    assert!(
        refused_update,
        "the poller never looked at the broken update"
    );
    sim.drop_next_calls(1);
    let reply = sale(&client, addr).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("outcome_unknown"),
        "{}",
        reply.text()
    );
    let reply = sale(&client, addr).await;
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "{}",
        reply.text()
    );
    assert_eq!(
        sim.stats().tls_handshake_failures,
        failures_before,
        "no new failure"
    );
    sidecar.shutdown().await;
}

#[test]
fn check_refuses_a_client_certificate_with_another_key() {
    let pki = Pki::new();
    let pair = pki.ca.client_cert("payauth").expect("client cert");
    let other = pki.ca.client_cert("other").expect("client cert");
    let config = pki.path("payauth.toml");
    let run_check = |lines: &str| {
        std::fs::write(
            &config,
            config_text(pki.dir.path(), "https://127.0.0.1:9", lines),
        )
        .expect("config");
        Command::new(env!("CARGO_BIN_EXE_payauth"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .expect("payauth runs")
    };

    let good = run_check(&pki.client_files(&pair));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );

    write_atomically(&pki.path("client-key.pem"), &other.key_pem);
    let ca_line = format!("ca_file = \"{}\"\n", pki.path("missing-ca.pem").display());
    let bad = run_check(&format!(
        "{ca_line}client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
        pki.path("client.pem").display(),
        pki.path("client-key.pem").display()
    ));
    assert_eq!(bad.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("do not belong together"), "{stderr}");
    assert!(
        stderr.contains("ca_file") && stderr.contains("missing-ca.pem"),
        "{stderr}"
    );
    let key_line = other.key_pem.lines().nth(1).expect("key body");
    assert!(!stderr.contains(key_line), "no key material in the report");
}

#[tokio::test]
async fn creditguard_over_mtls_gets_sessions_and_relays() {
    use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig};
    let pki = Pki::new();
    let identity = pki.ca.client_cert("payauth").expect("client cert");
    let sim = CreditGuardSim::start(
        ([127, 0, 0, 1], 0).into(),
        CreditGuardSimConfig {
            tls: Some(pki.server.clone().require_client_certs(pki.ca.cert_pem())),
            ..CreditGuardSimConfig::default()
        },
    )
    .await
    .expect("sim");
    assert!(sim.url().starts_with("https://"));
    std::fs::write(pki.path("password"), "s3cret-Passw0rd").expect("password");
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{state}\"\n[[gateway]]\nname = \"cg\"\n\
         kind = \"creditguard\"\nlisten = \"127.0.0.1:0\"\nupstream = \"{upstream}\"\nuser = \"merchant-user\"\n\
         password_file = \"{password}\"\nterminals = [\"0882819014\"]\nca_file = \"{ca}\"\n{client}",
        state = pki.path("state").display(),
        upstream = sim.url(),
        password = pki.path("password").display(),
        ca = pki.ca_file().display(),
        client = pki.client_files(&identity),
    );
    let sidecar = Sidecar::start(Config::parse(&text).expect("config"))
        .await
        .expect("start");
    let addr = sidecar.gateway_addr("cg").expect("listener");
    let form = "int_in=<ashrait><request><command>doDeal</command><doDeal><terminalNumber>0882819014</terminalNumber>\
                <cardNo>4580000000000000</cardNo><total>100</total><transactionType>Debit</transactionType>\
                <validation>AutoComm</validation></doDeal></request></ashrait>";
    let request = http::Request::post(format!("http://{addr}/xpo/Relay"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            form.as_bytes(),
        )))
        .expect("request");
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.text().contains("<result>000</result>"),
        "{}",
        reply.text()
    );
    assert!(sim.stats().get_session_ok >= 1);
    sidecar.shutdown().await;
}
