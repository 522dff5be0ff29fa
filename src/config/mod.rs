//! The sidecar's configuration: typed TOML, validated with every problem reported at once, and
//! secrets read from files.
//!
//! See the README's configuration reference for every key. Secrets are never in the TOML itself,
//! only the paths of files holding them (mounted Kubernetes Secrets); the files are re-read while
//! running (see [`crate::sidecar`]).

use std::fmt;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::guard::MAX_BUDGET;
use crate::number::SoapNames;
use crate::secret::Secret;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The admin listener.
    pub admin: AdminConfig,
    /// Where state lives.
    pub state_dir: PathBuf,
    /// Proxy-wide settings.
    pub proxy: ProxyConfig,
    /// The gateways.
    pub gateways: Vec<GatewayConfig>,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of `/live`, `/ready`, `/metrics` and `/admin/*`.
    pub listen: SocketAddr,
    /// File holding the bearer token of `POST /admin/*`; without it those endpoints are off.
    pub token_file: Option<PathBuf>,
}

/// `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How often secret files are checked for changes.
    pub secret_poll_interval: Duration,
}

/// One `[[gateway]]`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Name in metrics, logs, errors and admin paths.
    pub name: String,
    /// Where the app sends its calls.
    pub listen: SocketAddr,
    /// The gateway's base URL.
    pub upstream: Uri,
    /// Rejected authentications in a row that lock the gateway.
    pub auth_failure_budget: u32,
    /// Largest request body (413 above).
    pub max_request_bytes: usize,
    /// Answers up to this size are inspected.
    pub inspect_limit_bytes: usize,
    /// Time allowed to connect to the gateway.
    pub connect_timeout: Duration,
    /// Time allowed for an answer's head.
    pub request_timeout: Duration,
    /// Calls in flight at once before new ones get 503 `overloaded`.
    pub max_concurrency: usize,
    /// TLS settings for `https://` upstreams.
    pub tls: TlsFiles,
    /// What kind of gateway.
    pub kind: GatewayKind,
}

/// Certificate files for TLS origination.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Extra trusted CA certificates (PEM), added to the webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for mTLS.
    pub client_cert_file: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    pub client_key_file: Option<PathBuf>,
}

/// Kind-specific settings.
#[derive(Debug, Clone)]
pub enum GatewayKind {
    /// Number.
    Number(NumberSettings),
    /// CreditGuard.
    CreditGuard(CreditGuardSettings),
}

/// Number's settings.
#[derive(Debug, Clone)]
pub struct NumberSettings {
    /// REST or SOAP.
    pub protocol: crate::number::Protocol,
    /// REST: the Authenticate path; SOAP: the service path.
    pub auth_path: String,
    /// SOAP names.
    pub soap: SoapNames,
    /// `AcctCode`.
    pub account_code: String,
    /// File holding the token.
    pub token_file: PathBuf,
    /// File holding the HMAC secret (PCI mode).
    pub hmac_secret_file: Option<PathBuf>,
    /// User id of the signature.
    pub user_id: Option<u64>,
    /// When the token expires, if known (Unix seconds).
    pub token_expires_at: Option<i64>,
    /// Keys refused younger than this engage the renewal brake.
    pub renewal_min_key_age: Duration,
}

/// CreditGuard's settings.
#[derive(Debug, Clone)]
pub struct CreditGuardSettings {
    /// The relay path.
    pub relay_path: String,
    /// The API user.
    pub user: String,
    /// File holding the password.
    pub password_file: PathBuf,
    /// Allowed terminals.
    pub terminals: Vec<String>,
    /// `none` | `command` | `full`.
    pub scope: String,
    /// Sessions kept ready per (terminal, scope), at least.
    pub pool_min: usize,
    /// Sessions kept ready per (terminal, scope), at most.
    pub pool_max: usize,
    /// Sessions are discarded this long before they expire.
    pub session_expiry_margin: Duration,
    /// `getSessionId`s in flight at once while the credentials are proven.
    pub session_fetch_concurrency: u32,
    /// How long a call waits for a session when its pool is empty.
    pub session_wait: Duration,
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "- {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin: Option<RawAdmin>,
    state: Option<RawState>,
    proxy: Option<RawProxy>,
    #[serde(default)]
    gateway: Vec<RawGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    shutdown_grace_secs: Option<f64>,
    secret_poll_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: Option<String>,
    kind: Option<String>,
    listen: Option<String>,
    upstream: Option<String>,
    auth_failure_budget: Option<u32>,
    max_request_bytes: Option<usize>,
    inspect_limit_bytes: Option<usize>,
    connect_timeout_secs: Option<f64>,
    request_timeout_secs: Option<f64>,
    max_concurrency: Option<usize>,
    ca_file: Option<PathBuf>,
    client_cert_file: Option<PathBuf>,
    client_key_file: Option<PathBuf>,
    // number
    protocol: Option<String>,
    auth_path: Option<String>,
    soap_namespace: Option<String>,
    soap_auth_action: Option<String>,
    soap_session_element: Option<String>,
    account_code: Option<String>,
    token_file: Option<PathBuf>,
    hmac_secret_file: Option<PathBuf>,
    user_id: Option<toml::Value>,
    token_expires_at: Option<toml::Value>,
    renewal_min_key_age_secs: Option<f64>,
    // creditguard
    relay_path: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    terminals: Option<Vec<String>>,
    scope: Option<String>,
    pool_min: Option<usize>,
    pool_max: Option<usize>,
    session_expiry_margin_secs: Option<f64>,
    session_fetch_concurrency: Option<u32>,
    session_wait_secs: Option<f64>,
}

/// Where the config is read from when `--config` is not given.
pub const CONFIG_ENV: &str = "PAYAUTH_CONFIG";

impl Config {
    /// Reads and validates a config file. Secret files are not read here (see
    /// [`Config::check_secrets`]).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![format!("cannot read config {}: {e}", path.display())])
        })?;
        Self::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigErrors(vec![format!("invalid TOML: {}", e.message())]))?;
        let mut problems = Vec::new();
        let admin = raw.admin.unwrap_or(RawAdmin {
            listen: None,
            token_file: None,
        });
        let admin_listen = parse_addr(
            "admin.listen",
            admin.listen.as_deref().unwrap_or("127.0.0.1:9901"),
            &mut problems,
        );
        let proxy = raw.proxy.unwrap_or(RawProxy {
            shutdown_grace_secs: None,
            secret_poll_secs: None,
        });
        let proxy = ProxyConfig {
            shutdown_grace: secs(
                "proxy.shutdown_grace_secs",
                proxy.shutdown_grace_secs,
                25.0,
                &mut problems,
            ),
            secret_poll_interval: secs(
                "proxy.secret_poll_secs",
                proxy.secret_poll_secs,
                2.0,
                &mut problems,
            ),
        };
        let state_dir = raw
            .state
            .and_then(|s| s.dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/payauth"));
        if raw.gateway.is_empty() {
            problems.push("no [[gateway]] configured".into());
        }
        let mut gateways = Vec::new();
        for (i, g) in raw.gateway.into_iter().enumerate() {
            if let Some(gw) = validate_gateway(i, g, &mut problems) {
                gateways.push(gw);
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut addrs = std::collections::HashSet::new();
        addrs.insert(admin_listen);
        for g in &gateways {
            if !names.insert(g.name.clone()) {
                problems.push(format!("gateway name {:?} is used twice", g.name));
            }
            if g.listen.port() != 0 && !addrs.insert(g.listen) {
                problems.push(format!(
                    "gateway {:?}: listen {} is already used",
                    g.name, g.listen
                ));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        Ok(Config {
            admin: AdminConfig {
                listen: admin_listen,
                token_file: admin.token_file,
            },
            state_dir,
            proxy,
            gateways,
        })
    }

    /// Reads every secret file the config names and reports every problem (unreadable, empty).
    pub fn check_secrets(&self) -> Result<(), ConfigErrors> {
        let mut problems = Vec::new();
        let check = |problems: &mut Vec<String>, what: String, path: &Path| {
            if let Err(e) = read_secret(path) {
                problems.push(format!("{what}: {e}"));
            }
        };
        if let Some(path) = &self.admin.token_file {
            check(&mut problems, "admin.token_file".into(), path);
        }
        for g in &self.gateways {
            match &g.kind {
                GatewayKind::Number(n) => {
                    check(
                        &mut problems,
                        format!("gateway {:?}: token_file", g.name),
                        &n.token_file,
                    );
                    if let Some(path) = &n.hmac_secret_file {
                        check(
                            &mut problems,
                            format!("gateway {:?}: hmac_secret_file", g.name),
                            path,
                        );
                    }
                }
                GatewayKind::CreditGuard(c) => {
                    check(
                        &mut problems,
                        format!("gateway {:?}: password_file", g.name),
                        &c.password_file,
                    );
                }
            }
            // Every certificate file: readable, PEM, and the client pair belonging together.
            if let Err(tls_problems) = crate::proxy::tls::check_files(&g.tls) {
                problems.extend(
                    tls_problems
                        .into_iter()
                        .map(|p| format!("gateway {:?}: {p}", g.name)),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// A human summary with secrets redacted (for `payauth check`).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "admin: listen {} (admin API {})\nstate dir: {}\n",
                self.admin.listen,
                if self.admin.token_file.is_some() {
                    "on"
                } else {
                    "off: no token_file"
                },
                self.state_dir.display()
            ),
        );
        for g in &self.gateways {
            let detail = match &g.kind {
                GatewayKind::Number(n) => format!(
                    "number ({:?}), account {}, token <redacted>, signing {}",
                    n.protocol,
                    n.account_code,
                    if n.hmac_secret_file.is_some() {
                        "on (secret <redacted>)"
                    } else {
                        "off"
                    }
                ),
                GatewayKind::CreditGuard(c) => format!(
                    "creditguard, user {}, password <redacted>, terminals {:?}, scope {}",
                    c.user, c.terminals, c.scope
                ),
            };
            let _ = std::fmt::Write::write_fmt(
                &mut out,
                format_args!(
                    "gateway {}: {} -> {}, {}, budget {}\n",
                    g.name, g.listen, g.upstream, detail, g.auth_failure_budget
                ),
            );
        }
        out
    }
}

fn parse_addr(what: &str, value: &str, problems: &mut Vec<String>) -> SocketAddr {
    value.parse().unwrap_or_else(|_| {
        problems.push(format!(
            "{what}: {value:?} is not an address like 127.0.0.1:8081"
        ));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

fn secs(what: &str, value: Option<f64>, default: f64, problems: &mut Vec<String>) -> Duration {
    let v = value.unwrap_or(default);
    Duration::try_from_secs_f64(v).unwrap_or_else(|_| {
        problems.push(format!("{what}: {v} is not a number of seconds"));
        Duration::from_secs_f64(default)
    })
}

fn validate_gateway(i: usize, g: RawGateway, problems: &mut Vec<String>) -> Option<GatewayConfig> {
    let name = match g.name.as_deref() {
        Some(n)
            if !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            n.to_owned()
        }
        Some(n) => {
            problems.push(format!(
                "gateway #{}: name {n:?} must be letters, digits, '-' or '_'",
                i + 1
            ));
            format!("#{}", i + 1)
        }
        None => {
            problems.push(format!("gateway #{}: name is missing", i + 1));
            format!("#{}", i + 1)
        }
    };
    let before = problems.len();
    let mut missing =
        |field: &str| problems_push(problems, format!("gateway {name:?}: {field} is missing"));
    let kind = g.kind.clone();
    if kind.is_none() {
        missing("kind");
    }
    if g.listen.is_none() {
        missing("listen");
    }
    if g.upstream.is_none() {
        missing("upstream");
    }
    let listen = parse_addr(
        &format!("gateway {name:?}: listen"),
        g.listen.as_deref().unwrap_or("127.0.0.1:0"),
        problems,
    );
    let upstream = match g.upstream.as_deref().map(str::parse::<Uri>) {
        Some(Ok(u))
            if matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && matches!(u.path(), "" | "/") =>
        {
            Some(u)
        }
        Some(_) => {
            problems.push(format!(
                "gateway {name:?}: upstream must be a base URL like https://host[:port] (no path)"
            ));
            None
        }
        None => None,
    };
    let budget = g.auth_failure_budget.unwrap_or(1);
    if !(1..=MAX_BUDGET).contains(&budget) {
        problems.push(format!(
            "gateway {name:?}: auth_failure_budget {budget} must be 1..={MAX_BUDGET} (the gateway locks the IP at 6)"
        ));
    }
    if g.client_cert_file.is_some() != g.client_key_file.is_some() {
        problems.push(format!(
            "gateway {name:?}: client_cert_file and client_key_file go together"
        ));
    }
    let max_concurrency = g.max_concurrency.unwrap_or(256);
    if max_concurrency == 0 {
        problems.push(format!(
            "gateway {name:?}: max_concurrency must be at least 1"
        ));
    }
    let kind = match kind.as_deref() {
        Some("number") => validate_number(&name, &g, problems).map(GatewayKind::Number),
        Some("creditguard") => {
            validate_creditguard(&name, &g, problems).map(GatewayKind::CreditGuard)
        }
        Some(other) => {
            problems.push(format!(
                "gateway {name:?}: kind {other:?} must be \"number\" or \"creditguard\""
            ));
            None
        }
        None => None,
    };
    if problems.len() > before {
        return None;
    }
    Some(GatewayConfig {
        name: name.clone(),
        listen,
        upstream: upstream?,
        auth_failure_budget: budget,
        max_request_bytes: g.max_request_bytes.unwrap_or(1 << 20),
        inspect_limit_bytes: g.inspect_limit_bytes.unwrap_or(64 << 10),
        connect_timeout: secs(
            &format!("gateway {name:?}: connect_timeout_secs"),
            g.connect_timeout_secs,
            5.0,
            problems,
        ),
        request_timeout: secs(
            &format!("gateway {name:?}: request_timeout_secs"),
            g.request_timeout_secs,
            30.0,
            problems,
        ),
        max_concurrency,
        tls: TlsFiles {
            ca_file: g.ca_file,
            client_cert_file: g.client_cert_file,
            client_key_file: g.client_key_file,
        },
        kind: kind?,
    })
}

fn problems_push(problems: &mut Vec<String>, p: String) {
    problems.push(p);
}

fn validate_number(
    name: &str,
    g: &RawGateway,
    problems: &mut Vec<String>,
) -> Option<NumberSettings> {
    let before = problems.len();
    let protocol = match g.protocol.as_deref().unwrap_or("rest") {
        "rest" => crate::number::Protocol::Rest,
        "soap" => crate::number::Protocol::Soap,
        other => {
            problems.push(format!(
                "gateway {name:?}: protocol {other:?} must be \"rest\" or \"soap\""
            ));
            crate::number::Protocol::Rest
        }
    };
    for (field, present) in [
        ("relay_path", g.relay_path.is_some()),
        ("user", g.user.is_some()),
        ("password_file", g.password_file.is_some()),
        ("terminals", g.terminals.is_some()),
        ("scope", g.scope.is_some()),
        ("pool_min", g.pool_min.is_some()),
        ("pool_max", g.pool_max.is_some()),
        (
            "session_expiry_margin_secs",
            g.session_expiry_margin_secs.is_some(),
        ),
        (
            "session_fetch_concurrency",
            g.session_fetch_concurrency.is_some(),
        ),
        ("session_wait_secs", g.session_wait_secs.is_some()),
    ] {
        if present {
            problems.push(format!(
                "gateway {name:?}: {field} is a creditguard setting, not number's"
            ));
        }
    }
    let auth_path = match (&g.auth_path, protocol) {
        (Some(p), _) => p.clone(),
        (None, crate::number::Protocol::Rest) => "/APIcardProcREST/v1.0.0/Authenticate".into(),
        (None, crate::number::Protocol::Soap) => {
            problems.push(format!("gateway {name:?}: auth_path (the SOAP service path) is required with protocol = \"soap\""));
            String::new()
        }
    };
    if !auth_path.is_empty() && !auth_path.starts_with('/') {
        problems.push(format!("gateway {name:?}: auth_path must start with '/'"));
    }
    let defaults = SoapNames::default();
    let soap = SoapNames {
        namespace: g.soap_namespace.clone().unwrap_or(defaults.namespace),
        auth_action: g.soap_auth_action.clone().unwrap_or(defaults.auth_action),
        session_element: g
            .soap_session_element
            .clone()
            .unwrap_or(defaults.session_element),
    };
    let account_code = g.account_code.clone().unwrap_or_default();
    if account_code.is_empty() {
        problems.push(format!("gateway {name:?}: account_code is missing"));
    }
    if g.token_file.is_none() {
        problems.push(format!("gateway {name:?}: token_file is missing"));
    }
    let user_id = match &g.user_id {
        None => None,
        Some(toml::Value::Integer(i)) if *i >= 0 => Some(*i as u64),
        Some(toml::Value::String(s)) => match s.trim().parse() {
            Ok(v) => Some(v),
            Err(_) => {
                problems.push(format!("gateway {name:?}: user_id {s:?} must be a number"));
                None
            }
        },
        Some(_) => {
            problems.push(format!("gateway {name:?}: user_id must be a number"));
            None
        }
    };
    if g.hmac_secret_file.is_some() && user_id.is_none() {
        problems.push(format!(
            "gateway {name:?}: user_id is required with hmac_secret_file"
        ));
    }
    let token_expires_at = match &g.token_expires_at {
        None => None,
        Some(toml::Value::Datetime(d)) => parse_rfc3339(&d.to_string()),
        Some(toml::Value::String(s)) => parse_rfc3339(s),
        Some(toml::Value::Integer(i)) => Some(*i),
        Some(_) => None,
    };
    if g.token_expires_at.is_some() && token_expires_at.is_none() {
        problems.push(format!(
            "gateway {name:?}: token_expires_at must be a date like 2027-05-01T00:00:00Z"
        ));
    }
    let renewal_min_key_age = secs(
        &format!("gateway {name:?}: renewal_min_key_age_secs"),
        g.renewal_min_key_age_secs,
        30.0,
        problems,
    );
    if problems.len() > before {
        return None;
    }
    Some(NumberSettings {
        protocol,
        auth_path,
        soap,
        account_code,
        token_file: g.token_file.clone()?,
        hmac_secret_file: g.hmac_secret_file.clone(),
        user_id,
        token_expires_at,
        renewal_min_key_age,
    })
}

fn validate_creditguard(
    name: &str,
    g: &RawGateway,
    problems: &mut Vec<String>,
) -> Option<CreditGuardSettings> {
    let before = problems.len();
    for (field, present) in [
        ("protocol", g.protocol.is_some()),
        ("account_code", g.account_code.is_some()),
        ("token_file", g.token_file.is_some()),
        ("hmac_secret_file", g.hmac_secret_file.is_some()),
        (
            "renewal_min_key_age_secs",
            g.renewal_min_key_age_secs.is_some(),
        ),
    ] {
        if present {
            problems.push(format!(
                "gateway {name:?}: {field} is a number setting, not creditguard's"
            ));
        }
    }
    let user = g.user.clone().unwrap_or_default();
    if user.is_empty() {
        problems.push(format!("gateway {name:?}: user is missing"));
    }
    if g.password_file.is_none() {
        problems.push(format!("gateway {name:?}: password_file is missing"));
    }
    let terminals = g.terminals.clone().unwrap_or_default();
    if terminals.is_empty() {
        problems.push(format!(
            "gateway {name:?}: terminals must list at least one terminal"
        ));
    }
    for t in &terminals {
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
            problems.push(format!(
                "gateway {name:?}: terminal {t:?} must be letters and digits"
            ));
        }
    }
    let scope = g.scope.clone().unwrap_or_else(|| "command".into());
    if !matches!(scope.as_str(), "none" | "command" | "full") {
        problems.push(format!(
            "gateway {name:?}: scope {scope:?} must be \"none\", \"command\" or \"full\""
        ));
    }
    let relay_path = g.relay_path.clone().unwrap_or_else(|| "/xpo/Relay".into());
    if !relay_path.starts_with('/') {
        problems.push(format!("gateway {name:?}: relay_path must start with '/'"));
    }
    let pool_min = g.pool_min.unwrap_or(2);
    let pool_max = g.pool_max.unwrap_or(32);
    if pool_min > pool_max {
        problems.push(format!(
            "gateway {name:?}: pool_min {pool_min} is over pool_max {pool_max}"
        ));
    }
    let margin = secs(
        &format!("gateway {name:?}: session_expiry_margin_secs"),
        g.session_expiry_margin_secs,
        30.0,
        problems,
    );
    let session_fetch_concurrency = g.session_fetch_concurrency.unwrap_or(8);
    if !(1..=64).contains(&session_fetch_concurrency) {
        problems.push(format!(
            "gateway {name:?}: session_fetch_concurrency {session_fetch_concurrency} must be 1..=64"
        ));
    }
    let session_wait = secs(
        &format!("gateway {name:?}: session_wait_secs"),
        g.session_wait_secs,
        10.0,
        problems,
    );
    if problems.len() > before {
        return None;
    }
    Some(CreditGuardSettings {
        relay_path,
        user,
        password_file: g.password_file.clone()?,
        terminals,
        scope,
        pool_min,
        pool_max,
        session_expiry_margin: margin,
        session_fetch_concurrency,
        session_wait,
    })
}

/// Parses `YYYY-MM-DD[THH:MM:SS[Z]]` (UTC) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    if d.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    let secs_of_day = match time {
        None => 0,
        Some(t) => {
            let t = t.trim_end_matches('Z');
            let t = t.split(['+', '.']).next()?;
            let mut p = t.split(':');
            let h: i64 = p.next()?.parse().ok()?;
            let mi: i64 = p.next().unwrap_or("0").parse().ok()?;
            let se: i64 = p.next().unwrap_or("0").parse().ok()?;
            h * 3600 + mi * 60 + se
        }
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + secs_of_day)
}

/// Reads a secret file: surrounding whitespace (the newline editors and `echo` add) is trimmed;
/// an empty file is an error.
pub fn read_secret(path: &Path) -> io::Result<Secret<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Secret::new(trimmed.to_owned()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[admin]
listen = "127.0.0.1:9901"
[state]
dir = "/tmp/payauth-test"
[[gateway]]
name = "number"
kind = "number"
listen = "127.0.0.1:8081"
upstream = "https://easypay5.com"
account_code = "EP9116875"
token_file = "/run/secrets/number/token"
hmac_secret_file = "/run/secrets/number/hmac"
user_id = "2547"
[[gateway]]
name = "creditguard"
kind = "creditguard"
listen = "127.0.0.1:8082"
upstream = "https://cgpay2.example.co.il"
user = "merchant-user"
password_file = "/run/secrets/creditguard/password"
terminals = ["0882819014"]
scope = "full"
"#;

    #[test]
    fn the_design_example_is_valid() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.gateways.len(), 2);
        match &config.gateways[0].kind {
            GatewayKind::Number(n) => {
                assert_eq!(n.user_id, Some(2547));
                assert_eq!(n.auth_path, "/APIcardProcREST/v1.0.0/Authenticate");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.gateways[0].auth_failure_budget, 1);
        let summary = config.summary();
        assert!(summary.contains("<redacted>"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = r#"
[[gateway]]
name = "number"
kind = "number"
listen = "nope"
upstream = "ftp://x/path"
auth_failure_budget = 6
hmac_secret_file = "/x"
[[gateway]]
name = "cg"
kind = "creditguard"
listen = "127.0.0.1:8082"
upstream = "https://cg"
scope = "everything"
"#;
        let errors = Config::parse(bad).expect_err("invalid");
        let text = errors.to_string();
        for expected in [
            "listen",
            "upstream must be",
            "auth_failure_budget 6",
            "account_code is missing",
            "token_file is missing",
            "user_id is required",
            "user is missing",
            "password_file is missing",
            "terminals must list",
            "scope \"everything\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errors =
            Config::parse("[admin]\nlisten = \"127.0.0.1:1\"\ntypo = 1\n").expect_err("typo");
        assert!(errors.to_string().contains("typo"), "{errors}");
    }

    #[test]
    fn dates() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2023-12-14T14:56:29Z"), Some(1_702_565_789));
        assert_eq!(parse_rfc3339("2023-12-14"), Some(1_702_512_000));
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn secrets_are_trimmed_and_empty_ones_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        assert_eq!(read_secret(&path).expect("read").expose(), "abc");
        std::fs::write(&path, "\n").expect("write");
        assert!(read_secret(&path).is_err());
    }
}
