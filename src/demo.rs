//! `payauth demo`: the simulators and the sidecar on loopback with an embedded config, a short
//! scenario, and a summary of what happened. No setup, no network beyond 127.0.0.1.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use payauth::config::Config;
use payauth::sidecar::Sidecar;
use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig, ReceivedKind};
use payauth_sim::number::{NumberSim, NumberSimConfig};

/// The demo's test credentials: the simulator's defaults, public test values from the vendor's
/// documentation, not real secrets.
const TOKEN: &str = "2148B239CF6846BDA5D141BF4A4CFBE8";
const HMAC_SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
const REST: &str = "/APIcardProcREST/v1.0.0";
const CG_PASSWORD: &str = "s3cret-Passw0rd";
const TERMINAL: &str = "0882819014";
/// The token the vendor issues after revoking the first one (a test value too).
const NEW_TOKEN: &str = "9D0C1E2F3A4B5C6D7E8F90A1B2C3D4E5";

fn deal_int_in(total: u32) -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><dateTime/><requestId/>\
         <mayBeDuplicate>0</mayBeDuplicate><command>doDeal</command><doDeal>\
         <terminalNumber>{TERMINAL}</terminalNumber><cardNo>4580000000000000</cardNo><cardExpiration>1230</cardExpiration>\
         <total>{total}</total><transactionType>Debit</transactionType><creditType>RegularCredit</creditType>\
         <currency>ILS</currency><transactionCode>Phone</transactionCode><validation>AutoComm</validation>\
         </doDeal></request></ashrait>"
    )
}

/// A deal as many real clients post it: the form not URL-encoded, dummy credentials included.
async fn deal(client: &HttpClient, base: &str, total: u32) -> Result<String, String> {
    let form = format!("user=app&password=dummy&int_in={}", deal_int_in(total));
    let request = Request::post(format!("{base}/xpo/Relay"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())?;
    let (status, bytes) = exchange(client, request).await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status == StatusCode::OK && text.contains("<result>000</result>") {
        Ok(text)
    } else {
        Err(format!("HTTP {status}"))
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// Sends `request` and reads the whole answer.
async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

/// A sale as the app posts it, with the stale session key it still has.
async fn sale(client: &HttpClient, base: &str, amount: u32) -> Result<serde_json::Value, String> {
    let body = format!(
        r#"{{"Amount": {amount}.00, "CardNum": "4111111111111111", "ExpMonth": "12", "ExpYear": "30", "CVV": "123"}}"#
    );
    let request = Request::post(format!("{base}{REST}/CreditCardSale_Manual"))
        .header("content-type", "application/json")
        .header("SessKey", "whatever-the-app-had")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let (status, bytes) = exchange(client, request).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| format!("HTTP {status}, not JSON"))?;
    let ok = status == StatusCode::OK
        && value["CreditCardSale_ManualResult"]["FunctionOk"].as_bool() == Some(true);
    if ok {
        Ok(value)
    } else {
        Err(format!("HTTP {status}: {value}"))
    }
}

/// A sale that is expected to fail: payauth's error code (`x-payauth-error`), if any.
async fn refused_sale(client: &HttpClient, base: &str) -> Result<Option<String>, String> {
    let request = Request::post(format!("{base}{REST}/CreditCardSale_Manual"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"Amount": 9.00, "CardNum": "4111111111111111", "ExpMonth": "12", "ExpYear": "30"}"#,
        )))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    Ok(response
        .headers()
        .get("x-payauth-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned))
}

/// The running demo: the simulators and the sidecar, the app's HTTP client, and the tally every
/// step adds to.
struct Demo {
    sim: NumberSim,
    cg: CreditGuardSim,
    sidecar: Sidecar,
    client: HttpClient,
    /// The app's base URL for Number (payauth's listener).
    base: String,
    /// The app's base URL for CreditGuard (payauth's listener).
    cg_base: String,
    /// Where the token file is.
    dir: std::path::PathBuf,
    calls: u64,
    approved: u64,
    failures: Vec<String>,
}

/// Runs the demo; exit 0 when every step behaved as payauth promises.
pub(crate) async fn run() -> ExitCode {
    match scenario().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("payauth demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn scenario() -> Result<bool, String> {
    let dir = tempdir()?;
    let mut demo = Demo::start(&dir).await?;

    demo.app_logs_in_itself().await?;
    demo.sales_share_one_key().await;
    demo.key_expires().await;
    demo.egress_ip_changes().await;
    demo.concurrent_sales_across_an_expiry().await;
    demo.a_revoked_token_locks_once().await;

    println!(
        "\nCreditGuard: the app keeps posting user/password forms; payauth swaps in sessions."
    );
    demo.app_asks_for_a_session().await?;
    demo.raw_form_deals().await;
    demo.pooled_sessions_time_out().await;
    demo.concurrent_deals().await;

    demo.summary().await;
    Ok(demo.finish(&dir).await)
}

impl Demo {
    /// Starts the simulators and the sidecar with the embedded config, and prints where they are.
    async fn start(dir: &Path) -> Result<Self, String> {
        let (sim, cg) = start_simulators().await?;
        std::fs::write(dir.join("cg-password"), CG_PASSWORD).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("hmac"), HMAC_SECRET).map_err(|e| e.to_string())?;
        let config_text = config_text(dir, &sim.url(), &cg.url());
        let config = Config::parse(&config_text).map_err(|e| format!("embedded config: {e}"))?;
        let sidecar = Sidecar::start(config).await.map_err(|e| e.to_string())?;
        let payauth = sidecar.gateway_addr("number").ok_or("no number listener")?;
        let payauth_cg = sidecar
            .gateway_addr("creditguard")
            .ok_or("no creditguard listener")?;
        println!("payauth demo");
        println!("   Number simulator (REST, PCI signing on)  {}", sim.url());
        println!("   payauth listener for the app             http://{payauth}");
        println!("   CreditGuard relay simulator              {}", cg.url());
        println!("   payauth listener for the app             http://{payauth_cg}/xpo/Relay");
        println!(
            "   payauth admin (/metrics, /status)        http://{}\n",
            sidecar.admin_addr()
        );
        Ok(Self {
            sim,
            cg,
            sidecar,
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{payauth}"),
            cg_base: format!("http://{payauth_cg}"),
            dir: dir.to_owned(),
            calls: 0,
            approved: 0,
            failures: Vec::new(),
        })
    }

    /// One sale, counted in the tally.
    async fn sale(&mut self, amount: u32) -> Result<serde_json::Value, String> {
        self.calls += 1;
        let value = sale(&self.client, &self.base, amount).await?;
        self.approved += 1;
        Ok(value)
    }

    /// One deal, counted in the tally.
    async fn deal(&mut self, total: u32) -> bool {
        self.calls += 1;
        let ok = deal(&self.client, &self.cg_base, total).await.is_ok();
        self.approved += u64::from(ok);
        ok
    }

    fn expect(&mut self, what: &str, ok: bool) {
        if !ok {
            self.failures.push(what.to_owned());
        }
        println!("   {} {what}", if ok { "ok  " } else { "FAIL" });
    }

    async fn app_logs_in_itself(&mut self) -> Result<(), String> {
        println!("1. The app still logs in itself, with stale credentials:");
        let request = Request::post(format!("{}{REST}/Authenticate", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"AcctCode": "EP9116875", "Token": "stale"}"#,
            )))
            .map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = answer.status();
        let before = self.sim.stats().auth_attempts;
        self.expect(
            &format!(
                "answered by payauth (HTTP {status}); the gateway saw {before} authentications"
            ),
            status == StatusCode::OK && before == 0,
        );
        Ok(())
    }

    async fn sales_share_one_key(&mut self) {
        println!("2. Three sales; payauth authenticates once and signs every call:");
        for amount in 1..=3 {
            if let Err(e) = self.sale(amount).await {
                self.failures.push(format!("sale: {e}"));
            }
        }
        let stats = self.sim.stats();
        self.expect(
            &format!(
                "{} approved, {} authentication, {} bad signatures",
                stats.calls_ok, stats.auth_attempts, stats.bad_signatures
            ),
            stats.calls_ok == 3 && stats.auth_attempts == 1 && stats.bad_signatures == 0,
        );
    }

    async fn key_expires(&mut self) {
        println!("3. The session key expires (the gateway answers 5030):");
        self.sim.expire_keys();
        let renewed = self.sale(4).await.is_ok();
        let stats = self.sim.stats();
        self.expect(
            &format!("the app's sale was approved; behind it: one 5030, a renewal, one replay ({} authentications so far)", stats.auth_attempts),
            renewed && stats.calls_5030 == 1 && stats.auth_attempts == 2,
        );
    }

    async fn egress_ip_changes(&mut self) {
        println!("4. The egress IP changes (the gateway answers 5050):");
        self.sim.change_ip();
        let renewed = self.sale(5).await.is_ok();
        let stats = self.sim.stats();
        self.expect(
            &format!(
                "approved after one 5050 and one renewal ({} authentications so far)",
                stats.auth_attempts
            ),
            renewed && stats.calls_5050 == 1 && stats.auth_attempts == 3,
        );
    }

    async fn concurrent_sales_across_an_expiry(&mut self) {
        println!("5. 32 concurrent sales right across an expiry:");
        self.sim.expire_keys();
        let before = self.sim.stats().auth_attempts;
        let mut tasks = tokio::task::JoinSet::new();
        for amount in 0..32u32 {
            let client = self.client.clone();
            let base = self.base.clone();
            tasks.spawn(async move { sale(&client, &base, 100 + amount).await.is_ok() });
        }
        let ok = self.join_counted(tasks).await;
        let stats = self.sim.stats();
        self.expect(
            &format!(
                "{ok}/32 approved with {} authentication (single flight)",
                stats.auth_attempts - before
            ),
            ok == 32 && stats.auth_attempts - before == 1,
        );
    }

    async fn a_revoked_token_locks_once(&mut self) {
        println!("6. The vendor revokes the token; then a new token file arrives:");
        self.sim.set_token("REVOKED-AT-THE-VENDOR");
        self.sim.expire_keys();
        let (before, rejected_before) = {
            let stats = self.sim.stats();
            (stats.auth_attempts, stats.auth_rejected)
        };
        let mut codes = Vec::new();
        for _ in 0..5 {
            self.calls += 1;
            match refused_sale(&self.client, &self.base).await {
                Ok(code) => codes.push(code.unwrap_or_default()),
                Err(e) => codes.push(e),
            }
        }
        let stats = self.sim.stats();
        let locked = codes.iter().all(|c| c == "auth_locked");
        self.expect(
            &format!(
                "the revoked token was rejected {} time(s), never retried: {} authentication(s) sent for 5 sales, all 5 failed fast with auth_locked",
                stats.auth_rejected - rejected_before,
                stats.auth_attempts - before
            ),
            locked && stats.auth_rejected - rejected_before == 1 && stats.auth_attempts - before == 1,
        );
        // The operator puts the vendor's new token in the Secret (here: the token file).
        self.sim.set_token(NEW_TOKEN);
        let written = std::fs::write(self.dir.join("token"), format!("{NEW_TOKEN}\n"));
        let mut unlocked = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.sale(10).await.is_ok() {
                unlocked = true;
                break;
            }
        }
        self.expect(
            "the new token file unlocked the gateway without a restart; sales are approved again",
            written.is_ok() && unlocked,
        );
    }

    /// Waits for concurrent calls, counts each in the tally, and returns how many succeeded.
    async fn join_counted(&mut self, mut tasks: tokio::task::JoinSet<bool>) -> u64 {
        let mut ok = 0u64;
        while let Some(result) = tasks.join_next().await {
            self.calls += 1;
            ok += u64::from(matches!(result, Ok(true)));
        }
        self.approved += ok;
        ok
    }

    async fn app_asks_for_a_session(&mut self) -> Result<(), String> {
        println!("7. The app asks for a session itself:");
        let request = Request::post(format!("{}/xpo/Relay", self.cg_base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "user=app&password=dummy&int_in=<ashrait><request><command>getSessionId</command><getSessionId><terminalNumber>{TERMINAL}</terminalNumber></getSessionId></request></ashrait>"
            ))))
            .map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let bytes = answer
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let local = String::from_utf8_lossy(&bytes)
            .contains(payauth::creditguard::wire::PLACEHOLDER_SESSION_ID);
        let from_app = self
            .cg
            .received()
            .iter()
            .filter(|c| c.body.windows(9).any(|w| w == b"user=app&"))
            .count();
        self.expect(&format!("answered by payauth with a placeholder; the gateway saw {from_app} requests with the app's credentials"), local && from_app == 0);
        Ok(())
    }

    async fn raw_form_deals(&mut self) {
        println!("8. Three deals, posted as raw (unencoded) forms:");
        // Give the pool a moment to fill, as it would between real calls.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut ok = 0;
        for total in [100, 250, 990] {
            ok += u32::from(self.deal(total).await);
        }
        let received = self.cg.received();
        let deals: Vec<_> = received
            .iter()
            .filter(|c| c.kind == ReceivedKind::Call)
            .collect();
        let clean = deals.iter().all(|c| {
            c.session_id.is_some() && !c.field_names.iter().any(|f| f == "user" || f == "password")
        });
        let intact = deals
            .iter()
            .zip([100, 250, 990])
            .all(|(c, total)| c.int_in.as_deref() == Some(deal_int_in(total).as_bytes()));
        self.expect(&format!("{ok}/3 approved; each carried a fresh sessionId, no user/password, int_in byte for byte"), ok == 3 && clean && intact);
    }

    async fn pooled_sessions_time_out(&mut self) {
        println!("9. The gateway times the pooled sessions out (456):");
        // Let the pool refill, so the next deal takes a session the gateway then refuses.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.cg.expire_sessions();
        let renewed = self.deal(500).await;
        let stats = self.cg.stats();
        self.expect(
            &format!(
                "approved after one 456, a new session and one replay ({} answered 456)",
                stats.calls_456
            ),
            renewed && stats.calls_456 == 1,
        );
    }

    async fn concurrent_deals(&mut self) {
        println!("10. 16 concurrent deals:");
        let mut tasks = tokio::task::JoinSet::new();
        for total in 0..16u32 {
            let client = self.client.clone();
            let base = self.cg_base.clone();
            tasks.spawn(async move { deal(&client, &base, 1000 + total).await.is_ok() });
        }
        let ok = self.join_counted(tasks).await;
        let sessions: std::collections::HashSet<_> = self
            .cg
            .received()
            .into_iter()
            .filter(|c| c.kind == ReceivedKind::Call && c.result == "000")
            .filter_map(|c| c.session_id)
            .collect();
        let approved_calls = self.cg.stats().calls_ok;
        self.expect(
            &format!(
                "{ok}/16 approved; {} approved deals used {} distinct single-use sessions",
                approved_calls,
                sessions.len()
            ),
            ok == 16 && sessions.len() as u64 == approved_calls,
        );
    }

    /// Prints the tally, the simulators' counters and payauth's own metrics, and checks that the
    /// two agree.
    async fn summary(&mut self) {
        let metrics = fetch_metrics(&self.client, self.sidecar.admin_addr())
            .await
            .unwrap_or_default();
        let pick = |needle: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(needle))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let stats = self.sim.stats();
        println!("\nSummary");
        println!("   calls from the app             {}", self.calls);
        println!("   approved                       {}", self.approved);
        println!(
            "   authentications sent           {} ({} accepted, {} rejected)",
            stats.auth_attempts,
            stats.auth_attempts - stats.auth_rejected,
            stats.auth_rejected
        );
        println!(
            "   Number renewals                {} (5030: {}, 5050: {})",
            pick("payauth_reauth_total{gateway=\"number\""),
            pick("payauth_reauth_total{gateway=\"number\",reason=\"5030\"}"),
            pick("payauth_reauth_total{gateway=\"number\",reason=\"5050\"}")
        );
        println!(
            "   replays (both gateways)        {}",
            pick("payauth_replays_total")
        );
        println!(
            "   calls the gateway received     {} ({} refused with 5030/5050)",
            stats.calls,
            stats.calls_5030 + stats.calls_5050
        );
        let cg_stats = self.cg.stats();
        println!("   CreditGuard sessions fetched   {} (getSessionId answered 000), {} in the pool now, {} wasted",
            cg_stats.get_session_ok, pick("payauth_session_pool_size{gateway=\"creditguard\"}"),
            pick("payauth_sessions_wasted_total{gateway=\"creditguard\"}"));
        println!(
            "   CreditGuard renewals (456)     {}",
            pick("payauth_reauth_total{gateway=\"creditguard\",reason=\"456\"}")
        );
        println!("   secrets the app held           none: token, HMAC secret, password, session keys and ids stayed in payauth");
        let attempts = |result: &str| {
            pick(&format!(
                "payauth_auth_attempts_total{{gateway=\"number\",result=\"{result}\"}}"
            ))
        };
        let (success, rejected) = (attempts("success"), attempts("rejected"));
        self.expect(
            &format!(
                "/metrics agrees: {success} accepted and {rejected} rejected Number authentications, locked now: {}",
                pick("payauth_auth_locked{gateway=\"number\"}")
            ),
            success as u64 == stats.auth_attempts - stats.auth_rejected
                && rejected as u64 == stats.auth_rejected
                && pick("payauth_auth_locked{gateway=\"number\"}") == 0.0,
        );
    }

    /// Stops everything, removes the demo's files and prints the verdict; true when every step
    /// behaved as expected.
    async fn finish(self, dir: &Path) -> bool {
        self.sidecar.shutdown().await;
        self.sim.shutdown().await;
        self.cg.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
        if self.failures.is_empty() {
            println!("\nAll steps behaved as expected.");
            true
        } else {
            println!(
                "\n{} step(s) did not behave as expected:",
                self.failures.len()
            );
            for f in &self.failures {
                println!("   - {f}");
            }
            false
        }
    }
}

async fn start_simulators() -> Result<(NumberSim, CreditGuardSim), String> {
    let sim = NumberSim::start(
        ([127, 0, 0, 1], 0).into(),
        NumberSimConfig {
            hmac_secret: Some(HMAC_SECRET.into()),
            latency: Duration::from_millis(5),
            ..NumberSimConfig::default()
        },
    )
    .await
    .map_err(|e| format!("starting the Number simulator: {e}"))?;
    let cg = CreditGuardSim::start(
        ([127, 0, 0, 1], 0).into(),
        CreditGuardSimConfig {
            get_session_latency: Duration::from_millis(20),
            deal_latency: Duration::from_millis(10),
            ..CreditGuardSimConfig::default()
        },
    )
    .await
    .map_err(|e| format!("starting the CreditGuard simulator: {e}"))?;
    Ok((sim, cg))
}

/// The embedded config: both gateways on loopback, secrets in files under `dir`.
fn config_text(dir: &Path, upstream: &str, cg: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[state]
dir = "{state}"
[proxy]
shutdown_grace_secs = 5
# Step 6 replaces the token file; the demo notices within a fifth of a second.
secret_poll_secs = 0.2
[[gateway]]
name = "number"
kind = "number"
listen = "127.0.0.1:0"
upstream = "{upstream}"
account_code = "EP9116875"
token_file = "{token}"
hmac_secret_file = "{hmac}"
user_id = 2547
# The demo expires keys on purpose moments after they were issued: not a gateway anomaly here.
renewal_min_key_age_secs = 0
[[gateway]]
name = "creditguard"
kind = "creditguard"
listen = "127.0.0.1:0"
upstream = "{cg}"
user = "merchant-user"
password_file = "{cg_password}"
terminals = ["{TERMINAL}"]
scope = "full"
pool_min = 4
"#,
        state = dir.join("state").display(),
        token = dir.join("token").display(),
        hmac = dir.join("hmac").display(),
        cg_password = dir.join("cg-password").display(),
    )
}

async fn fetch_metrics(client: &HttpClient, admin: std::net::SocketAddr) -> Result<String, String> {
    let request = Request::get(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let (_, bytes) = exchange(client, request).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("payauth-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
