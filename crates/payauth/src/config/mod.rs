//! The sidecar's configuration: typed TOML, validated with every problem reported at once, and
//! secrets read from files.
//!
//! See the README's configuration reference for every key. Secrets are never in the TOML itself,
//! only the paths of files holding them (mounted Kubernetes Secrets); the files are re-read while
//! running (see [`crate::sidecar`]).

mod raw;
mod source;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::creditguard::CreditGuardConfig;
use crate::files::read_secret;
use crate::gateway::GatewaySettings;
use crate::number::NumberConfig;

pub use crate::proxy::tls::TlsFiles;
pub use source::Position;

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
    /// `[shared]`: the store shared by replicas behind one egress IP (`None`: each process
    /// keeps its own key and lockout budget).
    pub shared: Option<SharedConfig>,
}

/// `[shared]`: replicas behind one egress IP share one session key per Number gateway and one
/// lockout budget per gateway through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// `redis://host:port/db` or `rediss://...` (TLS); never with credentials in it.
    pub redis_url: String,
    /// The Redis ACL user, if any.
    pub username: Option<String>,
    /// File holding the Redis password, if any.
    pub password_file: Option<PathBuf>,
    /// `rediss://` only: the CA (PEM) the server's certificate is verified against, instead of
    /// the system's trusted CAs.
    pub ca_file: Option<PathBuf>,
    /// Names the egress IP or NAT the replicas share: a key is shared only under the same
    /// `egress_id`, never across egress IPs (Number binds keys to the caller's IP).
    pub egress_id: String,
    /// Time allowed to connect to Redis (default 500 ms).
    pub connect_timeout: Duration,
    /// Time allowed for one Redis operation (default 250 ms).
    pub op_timeout: Duration,
    /// How often a replica looks for a key a peer published (default 1 s).
    pub key_poll: Duration,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address of `/live`, `/ready`, `/metrics` and `/admin/*`.
    pub listen: SocketAddr,
    /// File holding the bearer token of `POST /admin/*`; without it those endpoints are off.
    pub token_file: Option<PathBuf>,
    /// `/ready` fails while a gateway is locked (default false: readiness says whether payauth
    /// can serve; a locked gateway shows in `/status`, metrics and alerts).
    pub ready_requires_unlocked: bool,
}

/// `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The bound of the whole stop after SIGTERM: draining the calls in flight and waiting for
    /// the authentications in flight together (see [`crate::sidecar::Sidecar::shutdown`]).
    pub shutdown_grace: Duration,
    /// How often secret files are checked for changes.
    pub secret_poll_interval: Duration,
    /// Threads serving the gateways' listeners, each with its own runtime, listeners
    /// (`SO_REUSEPORT`) and upstream connections (default: the available parallelism, which
    /// honours a cgroup CPU limit).
    pub workers: usize,
}

/// How far below the pod's `terminationGracePeriodSeconds` `shutdown_grace_secs` must stay:
/// room for the stop's last flush (at most half a second), the kubelet's own delay in sending
/// SIGTERM, and a `preStop` hook's.
pub const TERMINATION_MARGIN: Duration = Duration::from_secs(3);

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_TERMINATION_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// The most `[proxy] workers` may be.
pub const MAX_WORKERS: usize = 256;

/// The default of `[proxy] workers`: the available parallelism (the CPUs this process may use,
/// within a cgroup CPU limit), 1 when it cannot be told.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_WORKERS)
}

/// One `[[gateway]]`.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where the app sends its calls.
    pub listen: SocketAddr,
    /// Time allowed to connect to the gateway.
    pub connect_timeout: Duration,
    /// The local address the gateway's connections leave from (`source_address`; default: the
    /// system's choice). The gateway sees it as the caller's IP, which Number binds keys to.
    pub source_address: Option<std::net::IpAddr>,
    /// Calls in flight at once before new ones get 503 `overloaded`.
    pub max_concurrency: usize,
    /// TLS settings for `https://` upstreams.
    pub tls: TlsFiles,
    /// What kind of gateway, with its layer's config.
    pub kind: GatewayKind,
}

impl GatewayConfig {
    /// The settings every gateway layer takes (name, upstream, budget, limits, timeout).
    pub fn settings(&self) -> &GatewaySettings {
        match &self.kind {
            GatewayKind::Number(n) => &n.layer.gateway,
            GatewayKind::CreditGuard(c) => &c.layer.gateway,
        }
    }

    /// The gateway's name in metrics, logs, errors and admin paths.
    pub fn name(&self) -> &str {
        &self.settings().name
    }
}

/// Kind-specific settings.
#[derive(Debug, Clone)]
pub enum GatewayKind {
    /// Number.
    Number(NumberSettings),
    /// CreditGuard.
    CreditGuard(CreditGuardSettings),
}

/// A Number gateway: its layer's config, and where its credentials are.
#[derive(Debug, Clone)]
pub struct NumberSettings {
    /// The layer's config, as validation made it.
    pub layer: NumberConfig,
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
}

/// A CreditGuard gateway: its layer's config, and where its credentials are.
#[derive(Debug, Clone)]
pub struct CreditGuardSettings {
    /// The layer's config, as validation made it.
    pub layer: CreditGuardConfig,
    /// The API user.
    pub user: String,
    /// File holding the password.
    pub password_file: PathBuf,
}

/// One thing wrong with a configuration, and where in the file, when it is about one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: the key, or its table when the key is missing.
    pub at: Option<Position>,
    /// What, with no secret in it (secrets are only ever in files, never read into messages).
    pub message: String,
}

impl Problem {
    fn whole(message: String) -> Self {
        Self { at: None, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            // Keys start their line; the column says something only inside a line.
            Some(at) if at.column > 1 => write!(f, "{at}: {}", self.message),
            Some(at) => write!(f, "line {}: {}", at.line, self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Everything wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

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

/// Where the config is read from when `--config` is not given.
pub const CONFIG_ENV: &str = "PAYAUTH_CONFIG";

impl Config {
    /// Reads and validates a config file. Secret files are not read here (see
    /// [`Config::check_secrets`] and [`Config::check`]).
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        Self::parse(&read_config(path)?)
    }

    /// Parses and validates config text, reporting every problem with its line.
    pub fn parse(text: &str) -> Result<Self, ConfigErrors> {
        validate::validate(text, validate::Checks::Text)
    }

    /// What `payauth check` does: reads and validates a config file, and checks everything
    /// `payauth run` needs from the file system (secret files readable and not empty,
    /// certificate files usable, the state dir writable, its lockout records readable). Every
    /// problem found is reported, each with its line.
    pub fn check(path: &Path) -> Result<Self, ConfigErrors> {
        validate::validate(&read_config(path)?, validate::Checks::Files)
    }

    /// Reads every secret file the config names and reports every problem (unreadable, empty).
    pub fn check_secrets(&self) -> Result<(), ConfigErrors> {
        let mut problems = Vec::new();
        let check = |problems: &mut Vec<Problem>, what: String, path: &Path| {
            if let Err(e) = read_secret(path) {
                problems.push(Problem::whole(format!("{what}: {e}")));
            }
        };
        if let Some(path) = &self.admin.token_file {
            check(&mut problems, "admin.token_file".into(), path);
        }
        if let Some(shared) = &self.shared {
            if let Some(path) = &shared.password_file {
                check(&mut problems, "shared.password_file".into(), path);
            }
            let ca = crate::proxy::tls::TlsFiles {
                ca_file: shared.ca_file.clone(),
                ..Default::default()
            };
            if let Err(tls_problems) = crate::proxy::tls::check_files(&ca) {
                problems.extend(
                    tls_problems
                        .into_iter()
                        .map(|p| Problem::whole(format!("shared: {p}"))),
                );
            }
        }
        for g in &self.gateways {
            match &g.kind {
                GatewayKind::Number(n) => {
                    check(
                        &mut problems,
                        format!("gateway {:?}: token_file", g.name()),
                        &n.token_file,
                    );
                    if let Some(path) = &n.hmac_secret_file {
                        check(
                            &mut problems,
                            format!("gateway {:?}: hmac_secret_file", g.name()),
                            path,
                        );
                    }
                }
                GatewayKind::CreditGuard(c) => {
                    check(
                        &mut problems,
                        format!("gateway {:?}: password_file", g.name()),
                        &c.password_file,
                    );
                }
            }
            // Every certificate file: readable, PEM, and the client pair belonging together.
            if let Err(tls_problems) = crate::proxy::tls::check_files(&g.tls) {
                problems.extend(
                    tls_problems
                        .into_iter()
                        .map(|p| Problem::whole(format!("gateway {:?}: {p}", g.name()))),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(problems))
        }
    }

    /// What `payauth check` warns of when the pod that runs this config is given
    /// `termination_grace_period` (its `terminationGracePeriodSeconds`) to stop: a
    /// `shutdown_grace_secs` not below it minus [`TERMINATION_MARGIN`] lets the kubelet
    /// kill payauth mid-stop.
    pub fn shutdown_warning(&self, termination_grace_period: Duration) -> Option<String> {
        let grace = self.proxy.shutdown_grace;
        (grace + TERMINATION_MARGIN >= termination_grace_period).then(|| {
            format!(
                "[proxy] shutdown_grace_secs ({}) is not below the pod's \
                 terminationGracePeriodSeconds ({}) minus {} s: the pod may be killed before \
                 payauth has stopped (calls cut, an authentication's outcome lost). Lower \
                 shutdown_grace_secs or raise terminationGracePeriodSeconds \
                 (--termination-grace-period tells this check what the pod has)",
                grace.as_secs_f64(),
                termination_grace_period.as_secs_f64(),
                TERMINATION_MARGIN.as_secs()
            )
        })
    }

    /// A human summary with secrets redacted (for `payauth check`).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = std::fmt::Write::write_fmt(
            &mut out,
            format_args!(
                "admin: listen {} (admin API {})\nstate dir: {}\nworkers: {}\n",
                self.admin.listen,
                if self.admin.token_file.is_some() {
                    "on"
                } else {
                    "off: no token_file"
                },
                self.state_dir.display(),
                self.proxy.workers,
            ),
        );
        match &self.shared {
            None => out.push_str("shared: off (each process keeps its own key and budget)\n"),
            Some(shared) => {
                let _ = std::fmt::Write::write_fmt(
                    &mut out,
                    format_args!(
                        "shared: {} (egress {}, user {}, password {})\n",
                        shared.redis_url,
                        shared.egress_id,
                        shared.username.as_deref().unwrap_or("default"),
                        if shared.password_file.is_some() {
                            "<redacted>"
                        } else {
                            "none"
                        }
                    ),
                );
            }
        }
        for g in &self.gateways {
            let detail = match &g.kind {
                GatewayKind::Number(n) => format!(
                    "number ({:?}), account {}, token <redacted>, signing {}",
                    n.layer.protocol,
                    n.account_code,
                    if n.hmac_secret_file.is_some() {
                        "on (secret <redacted>)"
                    } else {
                        "off"
                    }
                ),
                GatewayKind::CreditGuard(c) => format!(
                    "creditguard, user {}, password <redacted>, terminals {:?}, scope {}",
                    c.user, c.layer.terminals, c.layer.scope
                ),
            };
            let _ = std::fmt::Write::write_fmt(
                &mut out,
                format_args!(
                    "gateway {}: {} -> {}, {}, budget {}\n",
                    g.name(),
                    g.listen,
                    g.settings().upstream,
                    detail,
                    g.settings().auth_failure_budget
                ),
            );
        }
        out
    }
}

fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![Problem::whole(format!(
            "cannot read config {}: {e}",
            path.display()
        ))])
    })
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
    fn a_shared_section_is_read_with_its_defaults() {
        let text = format!(
            "{GOOD}\n[shared]\nredis_url = \"redis://127.0.0.1:6379/0\"\negress_id = \"nat-eu-1a\"\n"
        );
        let config = Config::parse(&text).expect("valid");
        let shared = config.shared.as_ref().expect("shared");
        assert_eq!(shared.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(shared.egress_id, "nat-eu-1a");
        assert_eq!(shared.op_timeout, Duration::from_millis(250));
        assert_eq!(shared.connect_timeout, Duration::from_millis(500));
        assert_eq!(shared.key_poll, Duration::from_millis(1000));
        assert!(config
            .summary()
            .contains("shared: redis://127.0.0.1:6379/0 (egress nat-eu-1a"));
        assert!(Config::parse(GOOD).expect("valid").shared.is_none());
    }

    #[test]
    fn a_shared_section_is_refused_with_every_problem() {
        let text = format!(
            "{GOOD}\n[shared]\nredis_url = \"redis://:hunter2@127.0.0.1:6379\"\n\
             egress_id = \"nat eu\"\nusername = \"payauth\"\nop_timeout_ms = 0\nkeypoll_ms = 5\n"
        );
        let errors = Config::parse(&text).expect_err("invalid").to_string();
        for expected in [
            "must not hold a user or password",
            "shared.egress_id must be 1 to 64",
            "shared.username needs shared.password_file",
            "shared.op_timeout_ms must be at least 1",
            "did you mean `key_poll_ms`",
        ] {
            assert!(errors.contains(expected), "{expected}: {errors}");
        }
        assert!(
            !errors.contains("hunter2"),
            "the password is never echoed: {errors}"
        );
        let missing = Config::parse(&format!("{GOOD}\n[shared]\n")).expect_err("invalid");
        let missing = missing.to_string();
        assert!(missing.contains("redis_url is missing"), "{missing}");
        assert!(missing.contains("egress_id is missing"), "{missing}");
        for url in [
            "http://127.0.0.1:6379",
            "redis://127.0.0.1:6379/x",
            "redis:///0",
            "redis://127.0.0.1:6379/0?password=hunter2",
            "redis://127.0.0.1:6379/0#hunter2",
            "valkey://:hunter2@127.0.0.1",
            "https://user:hunter2@127.0.0.1",
            "redis://:hun ter2@127.0.0.1",
        ] {
            let text = format!("{GOOD}\n[shared]\nredis_url = \"{url}\"\negress_id = \"e\"\n");
            let errors = Config::parse(&text).expect_err(url).to_string();
            assert!(
                !errors.contains("hunter2") && !errors.contains("hun ter2"),
                "{errors}"
            );
        }
    }

    #[test]
    fn the_design_example_is_valid() {
        let config = Config::parse(GOOD).expect("valid");
        assert_eq!(config.gateways.len(), 2);
        match &config.gateways[0].kind {
            GatewayKind::Number(n) => {
                assert_eq!(n.user_id, Some(2547));
                assert_eq!(n.layer.auth_path, "/APIcardProcREST/v1.0.0/Authenticate");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(config.gateways[0].settings().auth_failure_budget, 1);
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
            "upstream: invalid value: string \"ftp://x/path\"",
            "auth_failure_budget 6",
            "account_code is missing",
            "token_file is missing",
            "user_id is required",
            "user is missing",
            "password_file is missing",
            "terminals must list",
            "scope: invalid value: string \"everything\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let errors =
            Config::parse("[admin]\nlisten = \"127.0.0.1:1\"\ntypo = 1\n").expect_err("typo");
        assert!(
            errors
                .to_string()
                .contains("line 3: [admin]: unknown key `typo`"),
            "{errors}"
        );
        let errors =
            Config::parse("[admin]\nlisen = \"127.0.0.1:1\"\n[[gateways]]\n").expect_err("typos");
        let text = errors.to_string();
        assert!(text.contains("did you mean `listen`?"), "{text}");
        assert!(text.contains("did you mean `gateway`?"), "{text}");
    }

    #[test]
    fn session_settings_are_creditguard_keys_with_their_ranges() {
        let errors = Config::parse(
            &GOOD
                .replace(
                    "scope = \"full\"",
                    "scope = \"full\"\nsession_fetch_concurrency = 65\nsession_wait_secs = 2.5",
                )
                .replace(
                    "kind = \"number\"",
                    "kind = \"number\"\nsession_wait_secs = 1",
                ),
        )
        .expect_err("out of range");
        let text = errors.to_string();
        assert!(
            text.contains("`session_wait_secs` is a creditguard key"),
            "{text}"
        );
        assert!(
            text.contains("session_fetch_concurrency 65 must be 1..=64"),
            "{text}"
        );
        assert_eq!(errors.0.len(), 2, "{text}");
    }

    #[test]
    fn empty_required_strings_are_refused_where_they_are() {
        let errors = Config::parse(&GOOD.replace("user = \"merchant-user\"", "user = \"\""))
            .expect_err("empty user");
        assert_eq!(
            errors.to_string(),
            "- line 20: gateway \"creditguard\": user is empty"
        );
    }

    #[test]
    fn scope_and_protocol_are_typed_once() {
        let config = Config::parse(&GOOD.replace(
            "kind = \"number\"",
            "kind = \"number\"\nprotocol = \"soap\"\nauth_path = \"/svc\"",
        ))
        .expect("valid");
        match (&config.gateways[0].kind, &config.gateways[1].kind) {
            (GatewayKind::Number(n), GatewayKind::CreditGuard(c)) => {
                assert_eq!(n.layer.protocol, crate::number::Protocol::Soap);
                assert_eq!(c.layer.scope, crate::creditguard::Scope::Full);
            }
            other => panic!("{other:?}"),
        }
        let errors = Config::parse(
            &GOOD.replace("kind = \"number\"", "kind = \"number\"\nprotocol = \"rpc\""),
        )
        .expect_err("bad protocol");
        assert!(
            errors
                .to_string()
                .contains("protocol: unknown variant `rpc`, expected `rest` or `soap`"),
            "{errors}"
        );
    }

    #[test]
    fn workers_default_to_the_available_parallelism_and_are_bounded() {
        let config = Config::parse(GOOD).expect("good");
        assert_eq!(config.proxy.workers, default_workers());
        assert!(config.proxy.workers >= 1);
        let config = Config::parse(&format!("[proxy]\nworkers = 3\n{GOOD}")).expect("3 workers");
        assert_eq!(config.proxy.workers, 3);
        assert!(
            config.summary().contains("workers: 3"),
            "{}",
            config.summary()
        );
        for bad in ["0", "257"] {
            let errors = Config::parse(&format!("[proxy]\nworkers = {bad}\n{GOOD}"))
                .expect_err(bad)
                .to_string();
            assert!(
                errors.contains("line 2: proxy.workers must be 1 to 256"),
                "{bad}: {errors}"
            );
        }
    }

    #[test]
    fn a_source_address_is_an_ip_without_a_port() {
        let config = Config::parse(GOOD).expect("good");
        assert_eq!(
            config.gateways[0].source_address, None,
            "the system's choice"
        );
        let with = |value: &str| {
            Config::parse(&GOOD.replace(
                "account_code = \"EP9116875\"",
                &format!("account_code = \"EP9116875\"\nsource_address = {value}"),
            ))
        };
        let config = with("\"127.0.0.2\"").expect("an IPv4 address");
        assert_eq!(
            config.gateways[0].source_address,
            Some(std::net::IpAddr::from([127, 0, 0, 2]))
        );
        assert!(with("\"::1\"").is_ok(), "an IPv6 address");
        for bad in ["\"127.0.0.2:80\"", "\"egress-a\"", "\"\"", "7"] {
            let errors = with(bad).expect_err(bad).to_string();
            assert!(errors.contains("source_address"), "{bad}: {errors}");
        }
    }

    #[test]
    fn readiness_ignores_a_lock_unless_opted_in() {
        assert!(
            !Config::parse(GOOD)
                .expect("good")
                .admin
                .ready_requires_unlocked
        );
        let opted = GOOD.replace("[admin]\n", "[admin]\nready_requires_unlocked = true\n");
        assert!(
            Config::parse(&opted)
                .expect("opted in")
                .admin
                .ready_requires_unlocked
        );
        let bad = GOOD.replace("[admin]\n", "[admin]\nready_requires_unlocked = \"yes\"\n");
        assert!(Config::parse(&bad).is_err());
    }

    #[test]
    fn keys_of_the_other_kind_are_refused() {
        let errors = Config::parse(
            &GOOD
                .replace("kind = \"number\"", "kind = \"number\"\npool_min = 1")
                .replace("scope = \"full\"", "scope = \"full\"\nuser_id = 1"),
        )
        .expect_err("other kind");
        let text = errors.to_string();
        assert!(
            text.contains("line 9: gateway \"number\": `pool_min` is a creditguard key"),
            "{text}"
        );
        assert!(
            text.contains("gateway \"creditguard\": `user_id` is a number key"),
            "{text}"
        );
        assert_eq!(errors.0.len(), 2, "{text}");
    }

    #[test]
    fn an_unknown_kind_still_gets_its_common_keys_checked() {
        let errors = Config::parse(
            "[[gateway]]\nname = \"x\"\nkind = \"nope\"\npool_min = 1\nmax_concurency = 2\n",
        )
        .expect_err("unknown kind");
        let text = errors.to_string();
        for expected in [
            "line 3: gateway \"x\": kind \"nope\" must be",
            "line 5: gateway \"x\": unknown key `max_concurency`; did you mean `max_concurrency`?",
            "gateway \"x\": listen is missing",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("pool_min"), "{text}");
    }

    #[test]
    fn gateways_may_be_inline_tables_and_dates_take_their_offset() {
        let config = Config::parse(
            "gateway = [{ name = \"n\", kind = \"number\", listen = \"127.0.0.1:1\", \
             upstream = \"http://127.0.0.1:2\", account_code = \"A\", token_file = \"/t\", \
             token_expires_at = 2026-01-01T00:00:00+02:00 }]\n",
        )
        .expect("valid");
        match &config.gateways[0].kind {
            GatewayKind::Number(n) => assert_eq!(n.token_expires_at, Some(1_767_218_400)),
            other => panic!("{other:?}"),
        }
        let errors = Config::parse(
            "gateway = [{ name = \"n\", kind = \"number\", listen = \"127.0.0.1:1\", \
             upstream = \"http://127.0.0.1:2\", account_code = \"A\", token_file = \"/t\", \
             token_expires_at = \"2027-02-31T00:00:00Z\" }]\n",
        )
        .expect_err("February 31");
        assert!(
            errors.to_string().contains("line 1, column "),
            "an inline key has its column: {errors}"
        );
        assert!(errors.to_string().contains("token_expires_at"), "{errors}");
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
