//! Test harness: the Number simulator and payauth's sidecar on 127.0.0.1:0, spoken to over HTTP.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod process;
pub mod redis;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payauth::config::Config;
use payauth::sidecar::Sidecar;
use payauth_sim::number::{NumberSim, NumberSimConfig};

pub const TOKEN: &str = "2148B239CF6846BDA5D141BF4A4CFBE8";
pub const HMAC_SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
pub const ADMIN_TOKEN: &str = "admin-bearer-0123456789";
pub const CARD: &str = "4580000000000000";
pub const REST: &str = "/APIcardProcREST/v1.0.0";
pub const SOAP_PATH: &str = "/APIcardProcR119/CardProcAPI.svc";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn error_code(&self) -> Option<String> {
        self.headers
            .get("x-payauth-error")
            .map(|v| v.to_str().expect("ascii").to_owned())
    }
}

pub async fn send(client: &HttpClient, request: Request<Full<Bytes>>) -> Reply {
    let response = client.request(request).await.expect("payauth answered");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

/// A JSON POST as an app sends it, with the stale `SessKey` it still holds.
pub async fn post(client: &HttpClient, addr: SocketAddr, path: &str, body: &str) -> Reply {
    post_with(client, addr, path, body, &[("SessKey", "app-supplied-key")]).await
}

/// A JSON POST with these extra headers.
pub async fn post_with(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request =
        Request::post(format!("http://{addr}{path}")).header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request");
    send(client, request).await
}

pub async fn sale(client: &HttpClient, addr: SocketAddr) -> Reply {
    post(
        client,
        addr,
        &format!("{REST}/CreditCardSale_Manual"),
        &format!(r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#),
    )
    .await
}

pub fn approved(reply: &Reply, method: &str) -> bool {
    reply.status == StatusCode::OK
        && reply.json()[format!("{method}Result")]["FunctionOk"].as_bool() == Some(true)
}

pub struct Options {
    pub protocol: &'static str,
    pub token: String,
    pub signing: bool,
    pub budget: u32,
    pub request_timeout_secs: f64,
    pub max_request_bytes: usize,
    pub max_concurrency: usize,
    pub upstream: Option<String>,
    /// `[proxy] workers`: 2 unless a test says otherwise, so that every test crosses threads.
    pub workers: usize,
    /// `[admin] ready_requires_unlocked`.
    pub ready_requires_unlocked: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            protocol: "rest",
            token: TOKEN.into(),
            signing: false,
            budget: 1,
            request_timeout_secs: 10.0,
            max_request_bytes: 1 << 20,
            max_concurrency: 256,
            upstream: None,
            workers: 2,
            ready_requires_unlocked: false,
        }
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub sidecar: Option<Sidecar>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub client: HttpClient,
    config_text: String,
}

impl Harness {
    pub async fn start(upstream: &str, options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, upstream, options).await
    }

    pub async fn start_in(dir: tempfile::TempDir, upstream: &str, options: Options) -> Self {
        let root = dir.path();
        std::fs::write(root.join("token"), format!("{}\n", options.token)).expect("token");
        std::fs::write(root.join("hmac"), HMAC_SECRET).expect("hmac");
        std::fs::write(root.join("admin-token"), ADMIN_TOKEN).expect("admin token");
        let signing = if options.signing {
            format!(
                "hmac_secret_file = \"{}\"\nuser_id = 2547\n",
                root.join("hmac").display()
            )
        } else {
            String::new()
        };
        let soap = if options.protocol == "soap" {
            format!("auth_path = \"{SOAP_PATH}\"\n")
        } else {
            String::new()
        };
        let config_text = format!(
            r#"
[admin]
listen = "127.0.0.1:0"
token_file = "{admin}"
ready_requires_unlocked = {ready_requires_unlocked}
[state]
dir = "{state}"
[proxy]
shutdown_grace_secs = 5
secret_poll_secs = 0.05
workers = {workers}
[[gateway]]
name = "number"
kind = "number"
listen = "127.0.0.1:0"
upstream = "{upstream}"
protocol = "{protocol}"
{soap}account_code = "EP9116875"
token_file = "{token}"
{signing}auth_failure_budget = {budget}
request_timeout_secs = {timeout}
max_request_bytes = {max_body}
max_concurrency = {max_concurrency}
"#,
            admin = root.join("admin-token").display(),
            state = root.join("state").display(),
            upstream = options.upstream.as_deref().unwrap_or(upstream),
            protocol = options.protocol,
            token = root.join("token").display(),
            budget = options.budget,
            timeout = options.request_timeout_secs,
            max_body = options.max_request_bytes,
            max_concurrency = options.max_concurrency,
            workers = options.workers,
            ready_requires_unlocked = options.ready_requires_unlocked,
        );
        let mut harness = Self {
            dir,
            sidecar: None,
            addr: ([127, 0, 0, 1], 0).into(),
            admin: ([127, 0, 0, 1], 0).into(),
            client: client(),
            config_text,
        };
        harness.boot().await;
        harness
    }

    async fn boot(&mut self) {
        let config = Config::parse(&self.config_text).expect("valid test config");
        let sidecar = Sidecar::start(config).await.expect("sidecar starts");
        self.addr = sidecar.gateway_addr("number").expect("number listener");
        self.admin = sidecar.admin_addr();
        self.sidecar = Some(sidecar);
    }

    /// Stops payauth and starts it again on the same state dir.
    pub async fn restart(&mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.shutdown().await;
        }
        self.boot().await;
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write_token(&self, token: &str) {
        write_atomically(&self.path("token"), token);
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        let request = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&self.client, request).await
    }

    pub async fn admin_post(&self, path: &str, bearer: Option<&str>, body: &str) -> Reply {
        let mut request = Request::post(format!("http://{}{path}", self.admin));
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        send(&self.client, request).await
    }

    pub async fn metric(&self, needle: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text();
        text.lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn stop(mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.shutdown().await;
        }
    }
}

/// Replaces a file the way Kubernetes updates a mounted Secret: a new file renamed into place.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub async fn number_sim(config: NumberSimConfig) -> NumberSim {
    NumberSim::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("simulator starts")
}

/// Polls `check` until it holds or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut check: F) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Polls the async `check` until it holds or `timeout` passes.
pub async fn eventually_async<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}
