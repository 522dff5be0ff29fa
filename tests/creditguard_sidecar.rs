//! CreditGuard through the sidecar (config, listener, admin): the simulator and payauth on
//! 127.0.0.1:0, HTTP in between.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{send, HttpClient, Reply};
use http::{Request, StatusCode};
use http_body_util::Full;
use payauth::config::Config;
use payauth::sidecar::Sidecar;
use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig, ReceivedKind};

const PASSWORD: &str = "s3cret-Passw0rd";
const TERMINAL: &str = "0882819014";
const CARD: &str = "4580000000000000";

fn int_in(terminal: &str) -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><command>doDeal</command><doDeal>\
         <terminalNumber>{terminal}</terminalNumber><cardNo>{CARD}</cardNo><cardExpiration>1230</cardExpiration>\
         <total>100</total><transactionType>Debit</transactionType><creditType>RegularCredit</creditType>\
         <currency>ILS</currency><transactionCode>Phone</transactionCode><validation>AutoComm</validation>\
         </doDeal></request></ashrait>"
    )
}

struct Cg {
    dir: tempfile::TempDir,
    sidecar: Option<Sidecar>,
    base: String,
    admin: std::net::SocketAddr,
    client: HttpClient,
    config: String,
}

impl Cg {
    async fn start(upstream: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("password"), password).expect("password");
        std::fs::write(dir.path().join("admin"), "admin-token").expect("admin");
        let config = format!(
            r#"
[admin]
listen = "127.0.0.1:0"
token_file = "{admin}"
[state]
dir = "{state}"
[proxy]
secret_poll_secs = 0.05
[[gateway]]
name = "creditguard"
kind = "creditguard"
listen = "127.0.0.1:0"
upstream = "{upstream}"
user = "merchant-user"
password_file = "{password}"
terminals = ["{TERMINAL}"]
scope = "full"
max_request_bytes = 4096
"#,
            admin = dir.path().join("admin").display(),
            state = dir.path().join("state").display(),
            password = dir.path().join("password").display(),
        );
        let mut cg = Self {
            dir,
            sidecar: None,
            base: String::new(),
            admin: ([127, 0, 0, 1], 0).into(),
            client: common::client(),
            config,
        };
        cg.boot().await;
        cg
    }

    async fn boot(&mut self) {
        let sidecar = Sidecar::start(Config::parse(&self.config).expect("config"))
            .await
            .expect("start");
        self.base = format!(
            "http://{}",
            sidecar.gateway_addr("creditguard").expect("listener")
        );
        self.admin = sidecar.admin_addr();
        self.sidecar = Some(sidecar);
    }

    async fn restart(&mut self) {
        if let Some(s) = self.sidecar.take() {
            s.shutdown().await;
        }
        self.boot().await;
    }

    async fn post(&self, form: String) -> Reply {
        let request = Request::post(format!("{}/xpo/Relay", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .expect("request");
        send(&self.client, request).await
    }

    async fn ready(&self) -> StatusCode {
        let request = Request::get(format!("http://{}/ready", self.admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&self.client, request).await.status
    }

    /// Whether `/status` says the gateway is locked.
    async fn locked(&self) -> bool {
        let request = Request::get(format!("http://{}/status", self.admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&self.client, request).await.json()["gateways"][0]["locked"] == true
    }
}

async fn sim() -> CreditGuardSim {
    CreditGuardSim::start(([127, 0, 0, 1], 0).into(), CreditGuardSimConfig::default())
        .await
        .expect("sim")
}

#[tokio::test]
async fn raw_forms_are_relayed_with_a_session_and_bad_input_is_refused() {
    let sim = sim().await;
    let cg = Cg::start(&sim.url(), PASSWORD).await;
    let reply = cg
        .post(format!(
            "user=app&password=dummy&int_in={}",
            int_in(TERMINAL)
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.text().contains("<result>000</result>"),
        "{}",
        reply.text()
    );
    let deals: Vec<_> = sim
        .received()
        .into_iter()
        .filter(|c| c.kind == ReceivedKind::Call)
        .collect();
    assert_eq!(deals.len(), 1);
    assert_eq!(
        deals[0].int_in.as_deref(),
        Some(int_in(TERMINAL).as_bytes()),
        "int_in byte for byte"
    );
    assert!(deals[0].session_id.is_some());
    assert!(!deals[0]
        .field_names
        .iter()
        .any(|f| f == "user" || f == "password"));

    let before = sim.stats().calls;
    let foreign = cg
        .post(format!(
            "user=app&password=x&int_in={}",
            int_in("9999999999")
        ))
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(
        foreign.error_code().as_deref(),
        Some("terminal_not_allowed")
    );
    let broken = cg.post("user=app&int_in=<ashrait><request>".into()).await;
    assert_eq!(broken.error_code().as_deref(), Some("bad_request"));
    let missing = cg.post("user=app&password=x".into()).await;
    assert_eq!(missing.error_code().as_deref(), Some("bad_request"));
    let big = cg
        .post(format!("int_in={}{}", int_in(TERMINAL), " ".repeat(5000)))
        .await;
    assert_eq!(big.error_code().as_deref(), Some("body_too_large"));
    assert_eq!(sim.stats().calls, before, "nothing refused was forwarded");
    for reply in [&foreign, &broken, &missing, &big] {
        assert!(!reply.text().contains(CARD), "no card data in errors");
    }
    cg.sidecar.expect("running").shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_locks_once_across_restarts_until_the_file_changes() {
    let sim = sim().await;
    let mut cg = Cg::start(&sim.url(), "wrong-password").await;
    let deal = || format!("int_in={}", int_in(TERMINAL));
    let reply = cg.post(deal()).await;
    assert_eq!(
        reply.error_code().as_deref(),
        Some("auth_locked"),
        "{}",
        reply.text()
    );
    for _ in 0..5 {
        assert_eq!(
            cg.post(deal()).await.error_code().as_deref(),
            Some("auth_locked")
        );
    }
    assert_eq!(
        sim.stats().get_session_rejected,
        1,
        "one rejected getSessionId, never retried"
    );
    // payauth can still serve: /ready stays 200 by default; /status shows the lock.
    assert_eq!(cg.ready().await, StatusCode::OK);
    assert!(cg.locked().await);

    cg.restart().await;
    assert_eq!(
        cg.post(deal()).await.error_code().as_deref(),
        Some("auth_locked")
    );
    assert_eq!(
        sim.stats().get_session_rejected,
        1,
        "a restart does not spend the budget again"
    );

    std::fs::write(cg.dir.path().join("password.tmp"), PASSWORD).expect("write");
    std::fs::rename(
        cg.dir.path().join("password.tmp"),
        cg.dir.path().join("password"),
    )
    .expect("rename");
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if cg
            .post(deal())
            .await
            .text()
            .contains("<result>000</result>")
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "the changed password file unlocked the gateway");
    assert_eq!(cg.ready().await, StatusCode::OK);
    assert!(!cg.locked().await);
    cg.sidecar.take().expect("running").shutdown().await;
}
