//! `payauth demo`: the simulators and the sidecar on loopback with an embedded config, a short
//! scenario, and a summary of what happened. No setup, no network beyond 127.0.0.1.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::Config;
use crate::sidecar::Sidecar;
use crate::simulate::creditguard::{CreditGuardSim, CreditGuardSimConfig, ReceivedKind};
use crate::simulate::number::{NumberSim, NumberSimConfig};

/// The demo's test credentials: the simulator's defaults, public test values from the vendor's
/// documentation, not real secrets.
const TOKEN: &str = "2148B239CF6846BDA5D141BF4A4CFBE8";
const HMAC_SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
const REST: &str = "/APIcardProcREST/v1.0.0";
const CG_PASSWORD: &str = "s3cret-Passw0rd";
const TERMINAL: &str = "0882819014";

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
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status == StatusCode::OK && text.contains("<result>000</result>") {
        Ok(text)
    } else {
        Err(format!("HTTP {status}"))
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

struct Demo {
    client: HttpClient,
    base: String,
    calls: u64,
    approved: u64,
    failures: Vec<String>,
}

impl Demo {
    async fn sale(&mut self, amount: u32) -> Result<serde_json::Value, String> {
        self.calls += 1;
        let body = format!(
            r#"{{"Amount": {amount}.00, "CardNum": "4111111111111111", "ExpMonth": "12", "ExpYear": "30", "CVV": "123"}}"#
        );
        let request = Request::post(format!("{}{REST}/CreditCardSale_Manual", self.base))
            .header("content-type", "application/json")
            .header("SessKey", "whatever-the-app-had")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| format!("HTTP {status}, not JSON"))?;
        let ok = status == StatusCode::OK
            && value["CreditCardSale_ManualResult"]["FunctionOk"].as_bool() == Some(true);
        if ok {
            self.approved += 1;
            Ok(value)
        } else {
            Err(format!("HTTP {status}: {value}"))
        }
    }

    fn expect(&mut self, what: &str, ok: bool) {
        if !ok {
            self.failures.push(what.to_owned());
        }
        println!("   {} {what}", if ok { "ok  " } else { "FAIL" });
    }
}

/// Runs the demo; exit 0 when every step behaved as payauth promises.
pub async fn run() -> ExitCode {
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
    std::fs::write(dir.join("cg-password"), CG_PASSWORD).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("hmac"), HMAC_SECRET).map_err(|e| e.to_string())?;
    let config_text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[state]
dir = "{state}"
[proxy]
shutdown_grace_secs = 5
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
        upstream = sim.url(),
        token = dir.join("token").display(),
        hmac = dir.join("hmac").display(),
        cg = cg.url(),
        cg_password = dir.join("cg-password").display(),
    );
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
        "   payauth admin (/metrics, /ready)         http://{}\n",
        sidecar.admin_addr()
    );

    let mut demo = Demo {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{payauth}"),
        calls: 0,
        approved: 0,
        failures: Vec::new(),
    };

    println!("1. The app still logs in itself, with stale credentials:");
    let request = Request::post(format!("{}{REST}/Authenticate", demo.base))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"AcctCode": "EP9116875", "Token": "stale"}"#,
        )))
        .map_err(|e| e.to_string())?;
    let answer = demo
        .client
        .request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = answer.status();
    let before = sim.stats().auth_attempts;
    demo.expect(
        &format!("answered by payauth (HTTP {status}); the gateway saw {before} authentications"),
        status == StatusCode::OK && before == 0,
    );

    println!("2. Three sales; payauth authenticates once and signs every call:");
    for amount in 1..=3 {
        if let Err(e) = demo.sale(amount).await {
            demo.failures.push(format!("sale: {e}"));
        }
    }
    let stats = sim.stats();
    demo.expect(
        &format!(
            "{} approved, {} authentication, {} bad signatures",
            stats.calls_ok, stats.auth_attempts, stats.bad_signatures
        ),
        stats.calls_ok == 3 && stats.auth_attempts == 1 && stats.bad_signatures == 0,
    );

    println!("3. The session key expires (the gateway answers 5030):");
    sim.expire_keys();
    let renewed = demo.sale(4).await.is_ok();
    let stats = sim.stats();
    demo.expect(
        &format!("the app's sale was approved; behind it: one 5030, a renewal, one replay ({} authentications so far)", stats.auth_attempts),
        renewed && stats.calls_5030 == 1 && stats.auth_attempts == 2,
    );

    println!("4. The egress IP changes (the gateway answers 5050):");
    sim.change_ip();
    let renewed = demo.sale(5).await.is_ok();
    let stats = sim.stats();
    demo.expect(
        &format!(
            "approved after one 5050 and one renewal ({} authentications so far)",
            stats.auth_attempts
        ),
        renewed && stats.calls_5050 == 1 && stats.auth_attempts == 3,
    );

    println!("5. 32 concurrent sales right across an expiry:");
    sim.expire_keys();
    let before = sim.stats().auth_attempts;
    let mut tasks = tokio::task::JoinSet::new();
    for amount in 0..32u32 {
        let client = demo.client.clone();
        let base = demo.base.clone();
        tasks.spawn(async move {
            let mut one = Demo {
                client,
                base,
                calls: 0,
                approved: 0,
                failures: Vec::new(),
            };
            one.sale(100 + amount).await.is_ok()
        });
    }
    let mut ok = 0u64;
    while let Some(result) = tasks.join_next().await {
        demo.calls += 1;
        if matches!(result, Ok(true)) {
            ok += 1;
        }
    }
    demo.approved += ok;
    let stats = sim.stats();
    demo.expect(
        &format!(
            "{ok}/32 approved with {} authentication (single flight)",
            stats.auth_attempts - before
        ),
        ok == 32 && stats.auth_attempts - before == 1,
    );

    let cg_base = format!("http://{payauth_cg}");
    println!(
        "\nCreditGuard: the app keeps posting user/password forms; payauth swaps in sessions."
    );
    println!("6. The app asks for a session itself:");
    let request = Request::post(format!("{cg_base}/xpo/Relay"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(format!(
            "user=app&password=dummy&int_in=<ashrait><request><command>getSessionId</command><getSessionId><terminalNumber>{TERMINAL}</terminalNumber></getSessionId></request></ashrait>"
        ))))
        .map_err(|e| e.to_string())?;
    let answer = demo
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
    let local =
        String::from_utf8_lossy(&bytes).contains(crate::creditguard::wire::PLACEHOLDER_SESSION_ID);
    let from_app = cg
        .received()
        .iter()
        .filter(|c| c.body.windows(9).any(|w| w == b"user=app&"))
        .count();
    demo.expect(&format!("answered by payauth with a placeholder; the gateway saw {from_app} requests with the app's credentials"), local && from_app == 0);

    println!("7. Three deals, posted as raw (unencoded) forms:");
    // Give the pool a moment to fill, as it would between real calls.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ok = 0;
    for total in [100, 250, 990] {
        demo.calls += 1;
        if deal(&demo.client, &cg_base, total).await.is_ok() {
            ok += 1;
        }
    }
    demo.approved += ok;
    let received = cg.received();
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
    demo.expect(&format!("{ok}/3 approved; each carried a fresh sessionId, no user/password, int_in byte for byte"), ok == 3 && clean && intact);

    println!("8. The gateway times the pooled sessions out (456):");
    // Let the pool refill, so the next deal takes a session the gateway then refuses.
    tokio::time::sleep(Duration::from_millis(300)).await;
    cg.expire_sessions();
    demo.calls += 1;
    let renewed = deal(&demo.client, &cg_base, 500).await.is_ok();
    demo.approved += u64::from(renewed);
    let stats = cg.stats();
    demo.expect(
        &format!(
            "approved after one 456, a new session and one replay ({} answered 456)",
            stats.calls_456
        ),
        renewed && stats.calls_456 == 1,
    );

    println!("9. 16 concurrent deals:");
    let mut tasks = tokio::task::JoinSet::new();
    for total in 0..16u32 {
        let client = demo.client.clone();
        let base = cg_base.clone();
        tasks.spawn(async move { deal(&client, &base, 1000 + total).await.is_ok() });
    }
    let mut ok = 0u64;
    while let Some(result) = tasks.join_next().await {
        demo.calls += 1;
        ok += u64::from(matches!(result, Ok(true)));
    }
    demo.approved += ok;
    let sessions: std::collections::HashSet<_> = cg
        .received()
        .into_iter()
        .filter(|c| c.kind == ReceivedKind::Call && c.result == "000")
        .filter_map(|c| c.session_id)
        .collect();
    let approved_calls = cg.stats().calls_ok;
    demo.expect(
        &format!(
            "{ok}/16 approved; {} approved deals used {} distinct single-use sessions",
            approved_calls,
            sessions.len()
        ),
        ok == 16 && sessions.len() as u64 == approved_calls,
    );

    let metrics = fetch_metrics(&demo.client, sidecar.admin_addr())
        .await
        .unwrap_or_default();
    let pick = |needle: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let stats = sim.stats();
    println!("\nSummary");
    println!("   calls from the app             {}", demo.calls);
    println!("   approved                       {}", demo.approved);
    println!(
        "   authentications sent           {} (all accepted, {} rejected)",
        stats.auth_attempts, stats.auth_rejected
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
    let cg_stats = cg.stats();
    println!("   CreditGuard sessions fetched   {} (getSessionId answered 000), {} in the pool now, {} wasted",
        cg_stats.get_session_ok, pick("payauth_session_pool_size{gateway=\"creditguard\"}"),
        pick("payauth_sessions_wasted_total{gateway=\"creditguard\"}"));
    println!(
        "   CreditGuard renewals (456)     {}",
        pick("payauth_reauth_total{gateway=\"creditguard\",reason=\"456\"}")
    );
    println!("   secrets the app held           none: token, HMAC secret, password, session keys and ids stayed in payauth");

    sidecar.shutdown().await;
    sim.shutdown().await;
    cg.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    if demo.failures.is_empty() {
        println!("\nAll steps behaved as expected.");
        Ok(true)
    } else {
        println!(
            "\n{} step(s) did not behave as expected:",
            demo.failures.len()
        );
        for f in &demo.failures {
            println!("   - {f}");
        }
        Ok(false)
    }
}

async fn fetch_metrics(client: &HttpClient, admin: std::net::SocketAddr) -> Result<String, String> {
    let request = Request::get(format!("http://{admin}/metrics"))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn tempdir() -> Result<std::path::PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("payauth-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
