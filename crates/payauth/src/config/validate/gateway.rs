//! The `[[gateway]]` tables: each checked on its own, its keys split between the common ones and
//! its kind's, the rules across them applied, and the files it names looked at.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

use super::super::raw::{KindName, RawCommon, RawCreditGuard, RawKind, RawNumber};
use super::super::source::{keys_of, Position};
use super::super::{CreditGuardSettings, GatewayConfig, GatewayKind, NumberSettings, TlsFiles};
use super::{unknown_key, Checks, Identity, Table, Validator};
use crate::creditguard::{CreditGuardConfig, PoolConfig, Scope};
use crate::gateway::GatewaySettings;
use crate::guard::{FileGuardStore, Fingerprint, GuardStore, MAX_BUDGET};
use crate::number::{NumberConfig, Protocol, SoapNames};

impl<'a> Validator<'a> {
    pub(super) fn gateways(
        &mut self,
        root: &'a toml_edit::Table,
        admin_listen: SocketAddr,
        state_dir: &Path,
    ) -> Option<Vec<GatewayConfig>> {
        let mut tables: Vec<(Option<Position>, &'a dyn TableLike)> = Vec::new();
        match root.get_key_value("gateway") {
            None => {}
            Some((_, Item::ArrayOfTables(array))) => {
                for table in array.iter() {
                    tables.push((self.position(table.span()), table));
                }
            }
            Some((_, Item::Value(Value::Array(array))))
                if array.iter().all(|v| v.as_inline_table().is_some()) =>
            {
                for value in array.iter() {
                    if let Some(table) = value.as_inline_table() {
                        tables.push((self.position(value.span()), table));
                    }
                }
            }
            Some((key, item)) => {
                let at = self.position(item.span().or_else(|| key.span()));
                self.problem(
                    at,
                    "gateway must be an array of tables: write each as [[gateway]]".into(),
                );
                return None;
            }
        }
        if tables.is_empty() {
            self.problem(None, "no [[gateway]] configured".into());
        }
        let mut gateways = Vec::new();
        let mut names = HashSet::new();
        let mut addrs = HashSet::from([admin_listen]);
        let mut complete = true;
        for (i, (header, table)) in tables.into_iter().enumerate() {
            let (gateway, identity) = self.gateway(i, header, table, state_dir);
            if let Some((name, at)) = identity.name {
                if !names.insert(name.clone()) {
                    self.problem(at, format!("gateway name {name:?} is used twice"));
                }
            }
            if let Some((addr, at)) = identity.listen {
                if addr.port() != 0 && !addrs.insert(addr) {
                    let message = format!("{}listen {addr} is already used", identity.key_prefix);
                    self.problem(at, message);
                }
            }
            match gateway {
                Some(g) => gateways.push(g),
                None => complete = false,
            }
        }
        complete.then_some(gateways)
    }

    fn gateway(
        &mut self,
        i: usize,
        header: Option<Position>,
        body: &'a dyn TableLike,
        state_dir: &Path,
    ) -> (Option<GatewayConfig>, Identity) {
        let before = self.problems.len();
        let name = body.get("name").and_then(Item::as_str);
        let label = match name {
            Some(n) if valid_name(n) => format!("gateway {n:?}"),
            _ => format!("gateway #{}", i + 1),
        };
        let mut table = self.table(label.clone(), format!("{label}: "), header, Some(body));
        let kind = self.kind(&mut table, body);
        let (common, specific) = self.split_keys(&mut table, body, kind);
        let good = self.check_values::<RawCommon>(&mut table, common);
        let common = self.build::<RawCommon>(&table, good).unwrap_or_default();
        let kind = kind.and_then(|kind| {
            let mut good = match kind {
                KindName::Number => self.check_values::<RawNumber>(&mut table, specific),
                KindName::CreditGuard => self.check_values::<RawCreditGuard>(&mut table, specific),
            };
            good.insert("kind", kind.as_str().into());
            self.build::<RawKind>(&table, good)
        });
        let identity = Identity {
            key_prefix: table.key_prefix.clone(),
            name: common
                .name
                .clone()
                .filter(|n| valid_name(n))
                .map(|n| (n, table.at("name"))),
            listen: common.listen.map(|a| (a.0, table.at("listen"))),
        };
        let gateway = self.gateway_settings(&table, common, kind, state_dir);
        let gateway = gateway.filter(|_| self.problems.len() == before);
        (gateway, identity)
    }

    /// The gateway's `kind`, if it is one payauth knows.
    fn kind(&mut self, table: &mut Table<'a>, body: &dyn TableLike) -> Option<KindName> {
        let Some(item) = body.get("kind") else {
            self.problem(table.header, format!("{}kind is missing", table.key_prefix));
            return None;
        };
        let written = item.as_str();
        if let Some(kind) = KindName::ALL
            .into_iter()
            .find(|k| Some(k.as_str()) == written)
        {
            return Some(kind);
        }
        let message = match written {
            Some(other) => format!(
                "{}kind {other:?} must be \"number\" or \"creditguard\"",
                table.key_prefix
            ),
            None => format!(
                "{}kind must be \"number\" or \"creditguard\"",
                table.key_prefix
            ),
        };
        self.problem(table.at("kind"), message);
        table.bad.insert("kind");
        None
    }

    /// Splits a gateway's keys into the common ones and those of its kind; reports the others.
    #[allow(clippy::type_complexity)]
    fn split_keys(
        &mut self,
        table: &mut Table<'a>,
        body: &'a dyn TableLike,
        kind: Option<KindName>,
    ) -> (Vec<(&'a str, &'a Item)>, Vec<(&'a str, &'a Item)>) {
        let common_keys = keys_of::<RawCommon>();
        let (mut common, mut specific) = (Vec::new(), Vec::new());
        for (key, item) in body.iter() {
            if key == "kind" {
                continue;
            }
            if common_keys.contains(&key) {
                common.push((key, item));
                continue;
            }
            let owner = KindName::ALL.into_iter().find(|k| k.keys().contains(&key));
            match (kind, owner) {
                (Some(kind), Some(owner)) if kind == owner => specific.push((key, item)),
                (Some(kind), Some(owner)) => {
                    let message = format!(
                        "{}: `{key}` is a {} key; a {} gateway does not take it",
                        table.label,
                        owner.as_str(),
                        kind.as_str()
                    );
                    self.problem(table.at(key), message);
                    table.bad.insert(key);
                }
                // Without a known kind, a key of either kind cannot be judged.
                (None, Some(_)) => {}
                (_, None) => {
                    // Suggestions come from the keys this gateway may have.
                    let kinds = kind
                        .as_ref()
                        .map_or(&KindName::ALL[..], std::slice::from_ref);
                    let candidates = common_keys
                        .iter()
                        .chain(kinds.iter().flat_map(|k| k.keys()))
                        .copied()
                        .chain(["kind"]);
                    let message = unknown_key(&table.label, key, candidates);
                    self.problem(table.at(key), message);
                    table.bad.insert(key);
                }
            }
        }
        (common, specific)
    }

    /// The rules across a gateway's keys, and its files.
    fn gateway_settings(
        &mut self,
        table: &Table<'_>,
        raw: RawCommon,
        kind: Option<RawKind>,
        state_dir: &Path,
    ) -> Option<GatewayConfig> {
        let name = self.gateway_name(table, raw.name);
        if raw.listen.is_none() {
            self.required(table, "listen");
        }
        if raw.upstream.is_none() {
            self.required(table, "upstream");
        }
        let budget = raw
            .auth_failure_budget
            .map_or(GatewaySettings::DEFAULT_AUTH_FAILURE_BUDGET, |c| c.0);
        if !(1..=MAX_BUDGET).contains(&budget) {
            let message = format!(
                "{}auth_failure_budget {budget} must be 1..={MAX_BUDGET} (the gateway locks the IP at 6)",
                table.key_prefix
            );
            self.problem(table.at("auth_failure_budget"), message);
        }
        let max_concurrency = raw.max_concurrency.map_or(256, |c| c.0);
        if max_concurrency == 0 {
            let message = format!("{}max_concurrency must be at least 1", table.key_prefix);
            self.problem(table.at("max_concurrency"), message);
        }
        let tls = TlsFiles {
            ca_file: raw.ca_file,
            client_cert_file: raw.client_cert_file,
            client_key_file: raw.client_key_file,
        };
        let pair_ok = self.tls_pair(table, &tls);
        let settings = match (&name, &raw.upstream) {
            (Some(name), Some(upstream)) => Some(GatewaySettings {
                name: name.clone(),
                upstream: upstream.0.clone(),
                auth_failure_budget: budget,
                max_request_bytes: raw
                    .max_request_bytes
                    .map_or(GatewaySettings::DEFAULT_MAX_REQUEST_BYTES, |c| c.0),
                inspect_limit_bytes: raw
                    .inspect_limit_bytes
                    .map_or(GatewaySettings::DEFAULT_INSPECT_LIMIT_BYTES, |c| c.0),
                request_timeout: raw
                    .request_timeout_secs
                    .map_or(GatewaySettings::DEFAULT_REQUEST_TIMEOUT, |s| s.0),
            }),
            _ => None,
        };
        let kind = match kind {
            Some(RawKind::Number(n)) => self.number(table, n, settings).map(GatewayKind::Number),
            Some(RawKind::CreditGuard(c)) => self
                .creditguard(table, c, settings)
                .map(GatewayKind::CreditGuard),
            None => None,
        };
        if self.checks == Checks::Files {
            self.gateway_files(table, name.as_deref(), &tls, pair_ok, state_dir);
        }
        Some(GatewayConfig {
            listen: raw.listen?.0,
            connect_timeout: raw
                .connect_timeout_secs
                .map_or(Duration::from_secs(5), |s| s.0),
            source_address: raw.source_address.map(|ip| ip.0),
            max_concurrency,
            tls,
            kind: kind?,
        })
    }

    fn number(
        &mut self,
        table: &Table<'_>,
        raw: RawNumber,
        settings: Option<GatewaySettings>,
    ) -> Option<NumberSettings> {
        let before = self.problems.len();
        let protocol = raw.protocol.map_or(Protocol::Rest, Protocol::from);
        let auth_path = match (raw.auth_path, protocol) {
            (Some(path), _) => {
                self.uri_path(table, "auth_path", &path);
                path
            }
            (None, Protocol::Rest) => NumberConfig::DEFAULT_REST_AUTH_PATH.into(),
            (None, Protocol::Soap) => {
                if table.missing("auth_path") {
                    let message = format!(
                        "{}auth_path (the SOAP service path) is required with protocol = \"soap\"",
                        table.key_prefix
                    );
                    self.problem(table.header, message);
                }
                String::new()
            }
        };
        let defaults = SoapNames::default();
        let soap = SoapNames {
            namespace: raw.soap_namespace.unwrap_or(defaults.namespace),
            auth_action: raw.soap_auth_action.unwrap_or(defaults.auth_action),
            session_element: raw.soap_session_element.unwrap_or(defaults.session_element),
        };
        let account_code = self.non_empty(table, "account_code", raw.account_code);
        if raw.token_file.is_none() {
            self.required(table, "token_file");
        }
        if self.checks == Checks::Files {
            if let Some(path) = &raw.token_file {
                self.secret_file(table, "token_file", path);
            }
            if let Some(path) = &raw.hmac_secret_file {
                self.secret_file(table, "hmac_secret_file", path);
            }
        }
        let user_id = raw.user_id.map(|u| u.0);
        if raw.hmac_secret_file.is_some() && user_id.is_none() && table.missing("user_id") {
            let message = format!(
                "{}user_id is required with hmac_secret_file",
                table.key_prefix
            );
            self.problem(table.at("hmac_secret_file"), message);
        }
        if self.problems.len() > before {
            return None;
        }
        Some(NumberSettings {
            layer: NumberConfig {
                gateway: settings?,
                protocol,
                auth_path,
                soap,
                renewal_min_key_age: raw
                    .renewal_min_key_age_secs
                    .map_or(NumberConfig::DEFAULT_RENEWAL_MIN_KEY_AGE, |s| s.0),
            },
            account_code: account_code?,
            token_file: raw.token_file?,
            hmac_secret_file: raw.hmac_secret_file,
            user_id,
            token_expires_at: raw.token_expires_at.map(|e| e.0),
        })
    }

    fn creditguard(
        &mut self,
        table: &Table<'_>,
        raw: RawCreditGuard,
        settings: Option<GatewaySettings>,
    ) -> Option<CreditGuardSettings> {
        let before = self.problems.len();
        let user = self.non_empty(table, "user", raw.user);
        match &raw.password_file {
            None => self.required(table, "password_file"),
            Some(path) if self.checks == Checks::Files => {
                self.secret_file(table, "password_file", path);
            }
            Some(_) => {}
        }
        let terminals = self.terminals(table, raw.terminals);
        let relay_path = raw
            .relay_path
            .unwrap_or_else(|| CreditGuardConfig::DEFAULT_RELAY_PATH.into());
        self.uri_path(table, "relay_path", &relay_path);
        let pools = PoolConfig::default();
        let pool_min = raw.pool_min.map_or(pools.min, |c| c.0);
        let pool_max = raw.pool_max.map_or(pools.max, |c| c.0);
        if pool_min > pool_max {
            let message = format!(
                "{}pool_min {pool_min} is over pool_max {pool_max}",
                table.key_prefix
            );
            self.problem(table.at("pool_min"), message);
        }
        let session_fetch_concurrency = raw
            .session_fetch_concurrency
            .map_or(CreditGuardConfig::DEFAULT_SESSION_FETCH_CONCURRENCY, |c| {
                c.0
            });
        if !(1..=64).contains(&session_fetch_concurrency) {
            let message = format!(
                "{}session_fetch_concurrency {session_fetch_concurrency} must be 1..=64",
                table.key_prefix
            );
            self.problem(table.at("session_fetch_concurrency"), message);
        }
        if self.problems.len() > before {
            return None;
        }
        Some(CreditGuardSettings {
            layer: CreditGuardConfig {
                gateway: settings?,
                relay_path,
                terminals,
                scope: raw.scope.map_or(Scope::default(), |s| s.0),
                session_fetch_concurrency,
                session_wait: raw
                    .session_wait_secs
                    .map_or(CreditGuardConfig::DEFAULT_SESSION_WAIT, |s| s.0),
                pool: PoolConfig {
                    min: pool_min,
                    max: pool_max,
                    expiry_margin: raw
                        .session_expiry_margin_secs
                        .map_or(pools.expiry_margin, |s| s.0),
                },
            },
            user: user?,
            password_file: raw.password_file?,
        })
    }

    /// A gateway's name: required, and letters, digits, '-' or '_'.
    fn gateway_name(&mut self, table: &Table<'_>, name: Option<String>) -> Option<String> {
        match name {
            Some(n) if valid_name(&n) => return Some(n),
            Some(n) => {
                let message = format!(
                    "{}name {n:?} must be letters, digits, '-' or '_'",
                    table.key_prefix
                );
                self.problem(table.at("name"), message);
            }
            None => self.required(table, "name"),
        }
        None
    }

    /// Whether the client certificate and key come as a pair (both or neither).
    fn tls_pair(&mut self, table: &Table<'_>, tls: &TlsFiles) -> bool {
        let pair_ok = tls.client_cert_file.is_some() == tls.client_key_file.is_some();
        if !pair_ok {
            let message = format!(
                "{}client_cert_file and client_key_file go together",
                table.key_prefix
            );
            let key = if tls.client_cert_file.is_some() {
                "client_cert_file"
            } else {
                "client_key_file"
            };
            self.problem(table.at(key), message);
        }
        pair_ok
    }

    /// CreditGuard's terminals: at least one, each letters and digits.
    fn terminals(&mut self, table: &Table<'_>, terminals: Option<Vec<String>>) -> Vec<String> {
        let terminals = terminals.unwrap_or_default();
        if terminals.is_empty() && !table.bad.contains("terminals") {
            let message = format!(
                "{}terminals must list at least one terminal",
                table.key_prefix
            );
            self.problem(table.at("terminals"), message);
        }
        for t in &terminals {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
                let message = format!(
                    "{}terminal {t:?} must be letters and digits",
                    table.key_prefix
                );
                self.problem(table.at("terminals"), message);
            }
        }
        terminals
    }

    /// A path the layers append to the upstream: it must start with '/' and be a valid URI path.
    fn uri_path(&mut self, table: &Table<'_>, key: &str, path: &str) {
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            let message = format!("{} must be a URL path starting with '/'", table.name(key));
            self.problem(table.at(key), message);
        }
    }

    /// The files a gateway names: secrets readable and not empty, certificates usable, its
    /// lockout record readable.
    fn gateway_files(
        &mut self,
        table: &Table<'_>,
        name: Option<&str>,
        tls: &TlsFiles,
        pair_ok: bool,
        state_dir: &Path,
    ) {
        // An unpaired certificate or key was reported already; its file is not looked at.
        let tls = if pair_ok {
            tls.clone()
        } else {
            TlsFiles {
                ca_file: tls.ca_file.clone(),
                ..TlsFiles::default()
            }
        };
        if let Err(problems) = crate::proxy::tls::check_files(&tls) {
            let key = if tls.client_cert_file.is_some() {
                "client_cert_file"
            } else {
                "ca_file"
            };
            for p in problems {
                let message = format!("{}{p}", table.key_prefix);
                self.problem(table.at(key), message);
            }
        }
        // `run` refuses a lockout record it cannot read: it will not guess how many rejected
        // authentications it held. Without a state dir there is no record (and check leaves no
        // directory behind).
        if !state_dir.is_dir() {
            return;
        }
        if let (Some(name), Ok(store)) = (name, FileGuardStore::new(state_dir)) {
            if let Err(e) = store.load(name, Fingerprint::of(&[])) {
                let message = format!("{}{e}", table.key_prefix);
                self.problem(table.header, message);
            }
        }
    }

    pub(super) fn secret_file(&mut self, table: &Table<'_>, key: &str, path: &Path) {
        if let Err(e) = super::super::read_secret(path) {
            let message = format!("{}: {e}", table.name(key));
            self.problem(table.at(key), message);
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
